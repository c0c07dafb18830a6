// An HTTP app written the idiomatic way, as the articles on socket activation show it, and
// nothing more: go-systemd's activation.Listeners() for the socket, daemon.SdNotify(READY=1)
// once serving, http.Server.Shutdown on SIGTERM. It knows nothing of handoff. Built offline
// from Debian's packages (GOPATH=/usr/share/gocode) by tests/proxy/build_go_app.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

func main() {
	listeners, err := activation.Listeners()
	if err != nil || len(listeners) == 0 {
		fmt.Fprintln(os.Stderr, "go_app: no socket in LISTEN_FDS:", err)
		os.Exit(1)
	}
	pid := strconv.Itoa(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", pid)
		fmt.Fprintln(w, pid)
	})
	srv := &http.Server{Handler: mux}
	go func() {
		if err := srv.Serve(listeners[0]); err != nil && err != http.ErrServerClosed {
			fmt.Fprintln(os.Stderr, "go_app:", err)
			os.Exit(1)
		}
	}()
	daemon.SdNotify(false, daemon.SdNotifyReady)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}
