package sandbox

import (
	"bytes"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// KillDescendants kills every live descendant of process pid, not pid itself, and returns how
// many it signalled. A reused worker's descendants die when its message is answered, not when
// it retires. It walks /proc/PID/task/TID/children down the tree and repeats until a pass
// finds nothing alive that it has not signalled, so that a process forked during a pass is caught by the next; zombies
// are skipped (their parent reaps them). A descendant that was re-parented away from the
// worker (to relayd, when the worker is not a namespace init) is the caller's to sweep.
func KillDescendants(pid int) int {
	killed := map[int]bool{}
	buf := make([]byte, 4096)
	for range 64 {
		var found []int
		queue := []int{pid}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			for _, c := range childrenOf(p, buf) {
				if !killed[c] && alive(c, buf) {
					found = append(found, c)
				}
				queue = append(queue, c)
			}
		}
		if len(found) == 0 {
			break
		}
		// A process with SIGKILL pending cannot fork any more, so once signalled it is not
		// looked at again.
		for _, c := range found {
			if unix.Kill(c, unix.SIGKILL) == nil {
				killed[c] = true
			}
		}
	}
	return len(killed)
}

// childrenOf lists the children of every thread of process pid.
func childrenOf(pid int, buf []byte) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var kids []int
	for _, t := range tasks {
		b, err := readFile(dir+t.Name()+"/children", buf)
		if err != nil {
			continue
		}
		for _, f := range bytes.Fields(b) {
			if n, err := strconv.Atoi(string(f)); err == nil {
				kids = append(kids, n)
			}
		}
	}
	return kids
}

// alive reports whether pid is a process that is not a zombie.
func alive(pid int, buf []byte) bool {
	b, err := readFile("/proc/"+strconv.Itoa(pid)+"/stat", buf)
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may hold any byte.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

func readFile(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}
