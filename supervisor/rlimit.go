package supervisor

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Rlimit is one resource limit applied to every worker.
type Rlimit struct {
	Resource int
	Cur, Max uint64
}

// Unlimited is RLIM_INFINITY.
const Unlimited = unix.RLIM_INFINITY

// rlimitNames are the resources by the names prlimit(1) gives them.
var rlimitNames = map[string]int{
	"as": unix.RLIMIT_AS, "core": unix.RLIMIT_CORE, "cpu": unix.RLIMIT_CPU,
	"data": unix.RLIMIT_DATA, "fsize": unix.RLIMIT_FSIZE, "nofile": unix.RLIMIT_NOFILE,
	"nproc": unix.RLIMIT_NPROC, "stack": unix.RLIMIT_STACK,
}

// RlimitByName returns the resource named as prlimit(1) names it (cpu, nofile, core, data, as…).
func RlimitByName(name string) (int, error) {
	r, ok := rlimitNames[strings.ToLower(name)]
	if !ok {
		names := make([]string, 0, len(rlimitNames))
		for n := range rlimitNames {
			names = append(names, n)
		}
		slices.Sort(names)
		return 0, fmt.Errorf("unknown resource %q (want one of %s)", name, strings.Join(names, ", "))
	}
	return r, nil
}

func applyLimits(pid int, limits []Rlimit) error {
	for _, l := range limits {
		lim := unix.Rlimit{Cur: l.Cur, Max: l.Max}
		if err := unix.Prlimit(pid, l.Resource, &lim, nil); err != nil {
			return fmt.Errorf("setting resource %d to %d/%d: %w", l.Resource, l.Cur, l.Max, err)
		}
	}
	return nil
}
