// The Go peer of bench/http_peers: net/http answering GET / with a short body, as the example
// server does, and GET /realistic with the same five header fields and 1 KiB body as
// example_server's /realistic. Usage: go_hello ADDRESS
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	body := []byte(fmt.Sprintf("hello from pid %d version go\n", os.Getpid()))
	realistic := []byte{}
	for row := 0; row < 32; row++ {
		realistic = append(realistic, fmt.Sprintf("row %02d abcdefghijklmnopqrstuvwx\n", row)...)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	http.HandleFunc("/realistic", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "private, max-age=60")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Vary", "Accept-Encoding")
		w.Write(realistic)
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
