// The Go peer of bench/http_peers: net/http answering GET / with a short body, as the example
// server does. Usage: go_hello ADDRESS
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	body := []byte(fmt.Sprintf("hello from pid %d version go\n", os.Getpid()))
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
