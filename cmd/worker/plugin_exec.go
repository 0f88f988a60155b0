//go:build !goplugin

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// servePlugin replaces the process with worker-plugin, the same worker built with go-plugin,
// which serves it as a plugin. The stdio worker leaves go-plugin out because its package
// initialisation alone more than doubles the start of a worker, which relayd pays per message;
// exec keeps the pid, process group, limits and parent-death signal relayd set up.
func servePlugin(w *worker, args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("serving go-plugin: %w", err)
	}
	path := filepath.Join(filepath.Dir(exe), pluginExecutable)
	err = syscall.Exec(path, append([]string{path}, args...), w.environ)
	return fmt.Errorf("serving go-plugin: executing %s: %w", path, err)
}
