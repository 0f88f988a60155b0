package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// checkWorker says what is wrong with the worker executable at path, or returns nil. relayd
// only warns about it and starts anyway: the worker may be installed, or fixed, after relayd
// starts, and every message then finds it, since each forks it anew.
func checkWorker(path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("worker %s does not exist; every message fails until it does", path)
	case err != nil:
		return fmt.Errorf("worker %s: %w", path, err)
	case fi.IsDir():
		return fmt.Errorf("worker %s is a directory, not an executable", path)
	case unix.Access(path, unix.X_OK) != nil:
		return fmt.Errorf("worker %s is not executable (mode %v); every message fails until it is", path, fi.Mode().Perm())
	}
	return nil
}
