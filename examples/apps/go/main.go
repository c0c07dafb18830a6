// A Go HTTP app that loses no request when `handoff run` (or systemd) replaces it: the recipe of
// docs/apps.md. The socket comes from LISTEN_FDS (go-systemd's activation.Listeners), READY=1
// goes out once it serves, and SIGTERM starts a drain that http.Server.Shutdown alone does not
// do right: Shutdown closes idle keep-alive connections at once, under clients that may have
// sent their next request already, and those requests fail.
//
// The drain: stop accepting (the socket itself stays open in the supervisor and the next
// generation), answer the next request on every connection with `Connection: close`, and wait
// until every connection is closed, at most drainGrace; only then Shutdown, for the connections
// whose clients stayed silent the whole time.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// How long a draining process waits for each keep-alive client's next request. A client that
// sends nothing for that long gets its connection closed by Shutdown; keep it below the
// supervisor's --stop-timeout.
const drainGrace = 5 * time.Second

// drainer counts the server's connections and makes every response after begin() the last one
// on its connection.
type drainer struct {
	draining atomic.Bool
	mu       sync.Mutex
	open     int
	idle     chan struct{} // closed once draining and no connection is left
}

func (d *drainer) connState(_ net.Conn, state http.ConnState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch state {
	case http.StateNew:
		d.open++
	case http.StateClosed, http.StateHijacked:
		d.open--
		if d.open == 0 && d.draining.Load() {
			close(d.idle)
		}
	}
}

func (d *drainer) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.draining.Load() {
			// net/http closes the connection after a response that says so.
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// begin is called once no connection can be accepted any more.
func (d *drainer) begin() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.draining.Store(true)
	if d.open == 0 {
		close(d.idle)
	}
}

func main() {
	listeners, err := activation.Listeners()
	if err != nil || len(listeners) == 0 || listeners[0] == nil {
		fmt.Fprintln(os.Stderr, "drain: no socket in LISTEN_FDS:", err)
		os.Exit(1)
	}
	ln := listeners[0]
	pid := strconv.Itoa(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", pid)
		fmt.Fprintln(w, pid)
	})

	d := &drainer{idle: make(chan struct{})}
	srv := &http.Server{Handler: d.wrap(mux), ConnState: d.connState}
	var stopping atomic.Bool
	served := make(chan struct{})
	go func() {
		defer close(served)
		// Returns when ln is closed below; the connections it accepted are served on.
		err := srv.Serve(ln)
		if !stopping.Load() {
			fmt.Fprintln(os.Stderr, "drain: serve:", err)
			os.Exit(1)
		}
	}()
	daemon.SdNotify(false, daemon.SdNotifyReady)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	stopping.Store(true)
	// Our copy of the socket only: the supervisor and the new generation keep accepting on it.
	ln.Close()
	<-served // every connection Serve accepted has been counted by connState
	d.begin()
	select {
	case <-d.idle:
	case <-time.After(drainGrace):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "drain: shutdown:", err)
	}
}
