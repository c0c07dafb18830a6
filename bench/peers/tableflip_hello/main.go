// The tableflip peer of bench/restart_peers: cloudflare/tableflip hands the listening socket to
// a new process on SIGHUP; the old one then stops with http.Server.Shutdown (which closes idle
// keep-alive connections and waits for active ones), as tableflip's documentation shows.
// Usage: tableflip_hello ADDRESS PIDFILE
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func main() {
	addr, pidFile := os.Args[1], os.Args[2]
	upg, err := tableflip.New(tableflip.Options{PIDFile: pidFile})
	if err != nil {
		panic(err)
	}
	defer upg.Stop()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		for range sig {
			if err := upg.Upgrade(); err != nil {
				fmt.Fprintln(os.Stderr, "upgrade failed:", err)
			}
		}
	}()
	ln, err := upg.Listen("tcp", addr)
	if err != nil {
		panic(err)
	}
	pid := fmt.Sprint(os.Getpid())
	body := []byte("hello from pid " + pid + " version tableflip\n")
	server := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Served-By", pid)
		w.Write(body)
	})}
	go server.Serve(ln)
	if err := upg.Ready(); err != nil {
		panic(err)
	}
	<-upg.Exit()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	server.Shutdown(ctx)
}
