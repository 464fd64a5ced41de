// Command etcd is the etcd server built from go.etcd.io/etcd/server/v3 at the
// version pinned in go.mod. The upstream main module carries replace
// directives, so `go install go.etcd.io/etcd/v3@version` is refused; this
// wrapper is the smallest way to build the same server from the module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
