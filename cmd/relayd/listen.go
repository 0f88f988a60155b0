package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/hashicorp/go-hclog"
)

// listen returns the socket systemd passed, or binds cfg.socket itself. A socket file that is
// already there is removed only when nothing answers on it; if another relayd does, listen
// refuses to start. A socket relayd binds itself is removed when the listener closes; one
// systemd passed is never removed.
func listen(cfg *config, log hclog.Logger) (net.Listener, error) {
	lns, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("using the sockets systemd passed: %w", err)
	}
	for i, ln := range lns {
		if ln == nil {
			continue
		}
		if _, ok := ln.(*net.UnixListener); !ok {
			ln.Close()
			continue
		}
		for _, other := range lns[i+1:] {
			if other != nil {
				other.Close()
			}
		}
		log.Info("listening on socket from systemd", "addr", ln.Addr().String())
		return ln, nil
	}
	if len(lns) > 0 {
		return nil, errors.New("systemd passed no Unix stream socket")
	}

	path := cfg.socket
	ln, err := listenUnix(path, cfg.socketMode, cfg.socketGroup, log)
	if errors.Is(err, errSocketInUse) {
		return nil, fmt.Errorf("another relayd is already listening on %s", path)
	}
	if err != nil {
		return nil, err
	}
	log.Debug("listening", "path", path, "mode", fmt.Sprintf("%#o", cfg.socketMode))
	return ln, nil
}

// maxSocketPath is the longest path a Unix socket can be bound to on Linux: sun_path holds 108
// bytes, the last one for the terminating NUL.
const maxSocketPath = 107

// checkSocketPath names what is wrong with a socket path that cannot be bound, where bind(2)
// would only say "invalid argument" or "no such file or directory".
func checkSocketPath(path string) error {
	if len(path) > maxSocketPath {
		return fmt.Errorf("socket path %s is %d bytes long; a Unix socket path has at most %d: choose a shorter --socket", path, len(path), maxSocketPath)
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("socket directory %s does not exist: create it, or choose another --socket", dir)
	case err != nil:
		return fmt.Errorf("socket directory: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	return nil
}

// errSocketInUse reports a socket path on which something answers.
var errSocketInUse = errors.New("socket in use")

// listenUnix binds a Unix socket at path with the given mode and group. A socket file already
// there is removed only after a failed connect shows it is stale; if something answers on it,
// listenUnix returns errSocketInUse. The listener removes the file when it closes.
func listenUnix(path string, mode os.FileMode, group string, log hclog.Logger) (net.Listener, error) {
	if err := checkSocketPath(path); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket; not touching it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, errSocketInUse
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("probing existing socket %s: %w", path, err)
		}
		log.Info("removing stale socket", "path", path)
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	// Bind under a umask that lets nobody else in until the mode below is set.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("setting socket mode: %w", err)
	}
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("--socket-group: %w", err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("setting socket group: %w", err)
		}
	}
	return ln, nil
}
