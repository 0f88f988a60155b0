// Package cli holds what the three commands (relayd, relay-echo and the worker) share in how they
// talk to a user: the help of their flags, the hint after a usage error, and the version line.
package cli

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/spf13/pflag"
)

// ExitUsage is the exit status of every command after a usage error: a flag it does not know, a
// value it cannot take, an argument it does not expect.
const ExitUsage = 2

// UsageError is a mistake in a command's arguments. The command prints it with Hint and exits
// with ExitUsage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError with a formatted message.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// IsUsage reports whether err is a usage error.
func IsUsage(err error) bool {
	var ue *UsageError
	return errors.As(err, &ue)
}

// Hint is the line every command prints after a usage error.
func Hint(name string) string {
	return fmt.Sprintf("Run '%s --help' for usage.", name)
}

// FlagUsages is fs.FlagUsagesWrapped(cols) without the "[=true|false]" pflag writes after every
// boolean flag: a boolean flag is given as --flag, which the help says by naming it alone.
// (pflag prints the suffix for any value whose IsBoolFlag is true; the flags are shown through
// a copy whose values hide that method, so alignment stays pflag's.)
func FlagUsages(fs *pflag.FlagSet, cols int) string {
	shown := pflag.NewFlagSet(fs.Name(), pflag.ContinueOnError)
	shown.SortFlags = fs.SortFlags
	fs.VisitAll(func(f *pflag.Flag) {
		c := *f
		if c.Value.Type() == "bool" {
			c.Value = plainValue{f.Value}
		}
		shown.AddFlag(&c)
	})
	return shown.FlagUsagesWrapped(cols)
}

// plainValue is a pflag.Value without IsBoolFlag.
type plainValue struct{ pflag.Value }

// Version is the version line of every command: its name, its version, and, for a build from a
// work tree without a version, the commit it was built from. version is what the build set with
// -ldflags "-X main.version=…", or "".
func Version(name, version string) string {
	if version != "" {
		return name + " " + version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return name + " devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return name + " " + v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return name + " devel"
	}
	return fmt.Sprintf("%s devel+%s%s", name, rev, dirty)
}
