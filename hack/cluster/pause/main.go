// Command pause holds a pod's namespaces open, as the pause image does for
// every pod sandbox: it waits for SIGTERM or SIGINT and exits.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
