module handoff.example/drain

go 1.19

require github.com/coreos/go-systemd/v22 v22.3.2

require github.com/godbus/dbus/v5 v5.0.4 // indirect

// Debian's packages (golang-github-coreos-go-systemd-dev and its dependency), offline:
// GOPROXY=off GOFLAGS=-mod=mod go build .
replace github.com/coreos/go-systemd/v22 => /usr/share/gocode/src/github.com/coreos/go-systemd

replace github.com/godbus/dbus/v5 => /usr/share/gocode/src/github.com/godbus/dbus
