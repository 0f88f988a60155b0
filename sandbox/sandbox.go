// Package sandbox confines worker processes with the kernel's unprivileged mechanisms: a user
// and PID namespace, Landlock and a seccomp filter.
package sandbox

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mode says how much of the sandbox relayd insists on.
type Mode string

const (
	// ModeAuto applies every mechanism the kernel has and reports the missing ones.
	ModeAuto Mode = "auto"
	// ModeStrict refuses to start unless the kernel enforces every mechanism.
	ModeStrict Mode = "strict"
	// ModeOff applies none: workers get the process isolation alone.
	ModeOff Mode = "off"
)

// ParseMode reads a --worker-sandbox value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeStrict, ModeOff:
		return m, nil
	}
	return "", fmt.Errorf("%q: want auto, strict or off", s)
}

// Mechanisms, by the names logs, status and metrics use.
const (
	// PIDNamespace is a new user and PID namespace per worker: the worker is its init, and
	// every descendant dies with it.
	PIDNamespace = "pid-namespace"
	// LandlockFS makes the file system read-only but for the scratch and writable paths.
	LandlockFS = "landlock-fs"
	// LandlockNet denies TCP bind and connect when the network is off.
	LandlockNet = "landlock-net"
	// LandlockScope keeps signals (and, network off, abstract Unix sockets) inside the worker.
	LandlockScope = "landlock-scope"
	// Seccomp denies the calls no worker needs and, network off, sockets but AF_UNIX.
	Seccomp = "seccomp"
)

// Mechanisms lists every mechanism, in the order reports use.
var Mechanisms = []string{PIDNamespace, LandlockFS, LandlockNet, LandlockScope, Seccomp}

// Policy is what a service lets its workers do.
type Policy struct {
	// Network lets workers use the network.
	Network bool
	// Writable are paths workers may write beneath, besides their scratch directory.
	Writable []string
}

// Config configures a Sandbox.
type Config struct {
	Mode   Mode
	Policy Policy
	// ScratchParent is where the directory of the workers' scratch directories is made
	// (default os.TempDir()).
	ScratchParent string
	// Probe returns a command that exits 0 at once (relayd's own --version); New starts it once
	// in every namespace the sandbox would use, to learn whether the kernel allows them.
	Probe func() *exec.Cmd
}

// Missing is a mechanism the kernel did not grant, and why.
type Missing struct {
	Mechanism string
	Reason    string
}

// Report says which mechanisms a Sandbox applies.
type Report struct {
	Mode     Mode
	Enforced []string
	Missing  []Missing
}

// Sandbox starts workers confined. It is safe for concurrent use.
type Sandbox struct {
	mode       Mode
	policy     Policy
	root       string // holds the scratch directories; mode 0711, so it cannot be listed
	abi        int    // Landlock ABI, 0 when not used
	attr       rulesetAttr
	prog       *syscall.SockFprog // nil when seccomp is not used
	cloneflags uintptr
	report     Report
	slots      atomic.Uint64 // slots made, to name their directories

	mu     sync.Mutex
	idle   []*slot     // guarded by mu; parked slots, the most recent last
	trim   *time.Timer // guarded by mu; ends slots idle too long
	closed bool        // guarded by mu
}

// New works out what the kernel enforces and prepares the sandbox. With ModeStrict it fails
// when a mechanism is missing; with ModeOff it returns a Sandbox that only makes scratch
// directories. Close removes the scratch directories' parent.
func New(cfg Config) (*Sandbox, error) {
	s := &Sandbox{mode: cfg.Mode, policy: cfg.Policy, report: Report{Mode: cfg.Mode}}
	if s.mode == "" {
		s.mode = ModeAuto
		s.report.Mode = ModeAuto
	}
	for _, p := range cfg.Policy.Writable {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("writable path %q is not absolute", p)
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("writable path: %w", err)
		}
	}
	parent := cfg.ScratchParent
	if parent == "" {
		parent = os.TempDir()
	}
	removeStale(parent)
	root, err := os.MkdirTemp(parent, scratchPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, fmt.Errorf("making the scratch directory: %w", err)
	}
	// Workers may enter their own scratch directory but not list the others'.
	if err := os.Chmod(root, 0o711); err != nil {
		os.Remove(root)
		return nil, fmt.Errorf("making the scratch directory: %w", err)
	}
	s.root = root
	if s.mode == ModeOff {
		return s, nil
	}
	if err := s.probe(cfg.Probe); err != nil {
		s.Close()
		return nil, err
	}
	if s.mode == ModeStrict && len(s.report.Missing) > 0 {
		s.Close()
		var names []string
		for _, m := range s.report.Missing {
			names = append(names, m.Mechanism+" ("+m.Reason+")")
		}
		return nil, fmt.Errorf("worker sandbox is strict, and the kernel does not enforce %s", strings.Join(names, ", "))
	}
	return s, nil
}

// nsFlags are the clone flags of a worker: a new user and PID namespace, and vfork. Go forks
// with vfork unless a new user namespace is asked for, and then copies the parent's page tables
// instead, because it would write the child's uid map while the child waits; that costs about
// 0.7 ms a worker. The sandbox writes no uid map (see Launch), so it asks for vfork itself,
// which Go's child code is written for.
const nsFlags = unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_VFORK | unix.CLONE_VM

// nsProbe is the outcome of trying the namespaces on a real process, once per process.
var nsProbe struct {
	sync.Mutex
	done    bool
	flags   uintptr // the clone flags that worked
	missing string  // why the namespaces did not, or ""
	err     error
}

// probe fills in what the kernel grants and sets the sandbox up to use it.
func (s *Sandbox) probe(cmd func() *exec.Cmd) error {
	missing := func(m string, reason string) {
		s.report.Missing = append(s.report.Missing, Missing{Mechanism: m, Reason: reason})
	}
	abi, err := landlockABI()
	switch {
	case err != nil:
		reason := "landlock_create_ruleset: " + err.Error()
		missing(LandlockFS, reason)
		if !s.policy.Network {
			missing(LandlockNet, reason)
		}
		missing(LandlockScope, reason)
	default:
		s.abi = abi
		s.attr = landlockRights(abi, s.policy.Network)
		if !s.policy.Network && s.attr.handledNet == 0 {
			missing(LandlockNet, fmt.Sprintf("Landlock ABI %d, TCP rules need 4", abi))
		}
		if s.attr.scoped == 0 {
			missing(LandlockScope, fmt.Sprintf("Landlock ABI %d, scopes need 6", abi))
		}
		// The rules are opened for each slot and closed again, so that the sandbox holds
		// no descriptor at rest; this first time checks the writable paths.
		rules, err := s.openRules(s.root)
		if err != nil {
			return err
		}
		closeRules(rules)
	}
	if err := seccompAvailable(); err != nil {
		missing(Seccomp, err.Error())
	} else if s.prog, err = seccompProgram(s.policy.Network); err != nil {
		return err
	}
	if cmd == nil {
		missing(PIDNamespace, "not probed")
		return nil
	}

	// Try the whole confinement on a real process: first with the namespaces, then, should
	// the kernel (or a seccomp filter around relayd, such as systemd's RestrictNamespaces=)
	// refuse them, without. A Landlock or seccomp failure shows up on both and is reported.
	s.cloneflags = nsFlags
	if hasCapability(unix.CAP_SYS_ADMIN) {
		// A privileged relayd makes the PID namespace alone: it needs no user namespace for
		// it, and a worker in a user namespace without a uid map was seen, now and then right
		// after relayd started, refused by the permission bits of its own scratch directory
		// (see Launch). Dropping a root worker's privileges is --worker-user's job.
		s.cloneflags = unix.CLONE_NEWPID
	}
	// The kernel's answer is the same for every sandbox of the process, and it is asked once:
	// a relayd with several services makes a sandbox per service, the later ones while a
	// supervisor already sweeps relayd's children, and that sweep would kill an untracked
	// probe process.
	nsProbe.Lock()
	defer nsProbe.Unlock()
	if !nsProbe.done {
		nsProbe.flags, nsProbe.missing, nsProbe.err = s.cloneflags, "", nil
		if err := s.run(cmd()); err != nil {
			nsProbe.missing = err.Error()
			// A PID namespace alone, for a relayd with CAP_SYS_ADMIN where user namespaces
			// are turned off; then none.
			for _, flags := range []uintptr{unix.CLONE_NEWPID, 0} {
				s.cloneflags = flags
				if err = s.run(cmd()); err == nil {
					break
				}
			}
			nsProbe.flags = s.cloneflags
			if nsProbe.flags != 0 {
				nsProbe.missing = ""
			}
			if err != nil {
				nsProbe.err = fmt.Errorf("starting a confined process: %w", err)
			}
		}
		nsProbe.done = nsProbe.err == nil
		if nsProbe.err != nil {
			return nsProbe.err
		}
	}
	s.cloneflags = nsProbe.flags
	if nsProbe.missing != "" {
		missing(PIDNamespace, nsProbe.missing)
	}
	for _, m := range Mechanisms {
		if !slices.ContainsFunc(s.report.Missing, func(x Missing) bool { return x.Mechanism == m }) &&
			(m != LandlockNet || !s.policy.Network) {
			s.report.Enforced = append(s.report.Enforced, m)
		}
	}
	return nil
}

// run starts cmd in the sandbox and waits for it to exit 0.
func (s *Sandbox) run(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	release, err := s.Launch(cmd, cmd.Start)
	if err != nil {
		return err
	}
	err = cmd.Wait()
	release()
	// The probe's thread is not kept for workers: it was made and confined from the caller of
	// New, which is relayd's main goroutine, and a worker forked right after from that slot
	// was seen refused writes in its scratch directory now and then.
	s.dropIdle()
	return err
}

// dropIdle ends every parked slot.
func (s *Sandbox) dropIdle() {
	s.mu.Lock()
	idle := s.idle
	s.idle = nil
	s.mu.Unlock()
	for _, sl := range idle {
		endSlot(sl)
	}
}

// Report says which mechanisms the sandbox applies and which the kernel lacks. A nil Sandbox
// applies none (ModeOff).
func (s *Sandbox) Report() Report {
	if s == nil {
		return Report{Mode: ModeOff}
	}
	r := s.report
	r.Enforced = slices.Clone(r.Enforced)
	r.Missing = slices.Clone(r.Missing)
	return r
}

// Close ends the sandbox's threads and removes the directory of the scratch directories. Every
// worker must have been released. A nil Sandbox has nothing to close.
func (s *Sandbox) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	s.closed = true
	idle := s.idle
	s.idle = nil
	if s.trim != nil {
		s.trim.Stop()
		s.trim = nil
	}
	s.mu.Unlock()
	for _, sl := range idle {
		endSlot(sl)
	}
	// Slots still lent out end when their workers are released.
	return os.RemoveAll(s.root)
}

// Launch prepares cmd for the sandbox and calls fork, which must start cmd, on an OS thread
// confined as the worker will be: the worker inherits the thread's Landlock domain, seccomp
// filter and no_new_privs at fork, so it is confined from its first instruction, and nothing
// needs to run between fork and exec (Go offers no hook there). The thread is the worker's
// parent for PR_SET_PDEATHSIG, so it serves this worker alone until release is called, after
// the worker has been reaped; then the worker's scratch directory is removed and the thread
// waits for the next worker.
//
// Confined threads are kept in a pool of slots rather than made per worker: a Landlock domain
// cannot be lifted, so a thread confined for one worker could only end with it, and making and
// ending a thread per message, under load, costs more than the whole sandbox otherwise does.
// Each slot has a directory of its own, writable beneath in its domain alone; a worker's
// TMPDIR is a new directory in it with a random name, and release empties the slot's directory
// before another worker gets the slot. Workers alive at the same time are thus always in
// different Landlock domains: none can write, signal or trace (read /proc/PID/environ of)
// another.
//
// Launch adds TMPDIR to cmd.Env and the namespace flags to cmd.SysProcAttr. The user
// namespace has no uid map: the worker keeps its uid outside (so files it makes are owned as
// before) and holds no capability at all; writing a map would take a
// write to /proc/PID/uid_map, which the confined thread cannot make. With a Credential
// (--worker-user), which needs a mapped uid, only the PID namespace is new, which the root
// relayd that sets one may create.
func (s *Sandbox) Launch(cmd *exec.Cmd, fork func() error) (release func(), err error) {
	if s.mode == ModeOff {
		scratch, err := s.newScratch(s.root)
		if err != nil {
			return nil, err
		}
		setTMPDIR(cmd, scratch)
		if err := fork(); err != nil {
			os.RemoveAll(scratch)
			return nil, err
		}
		return func() { os.RemoveAll(scratch) }, nil
	}
	sl, err := s.slot()
	if err != nil {
		return nil, err
	}
	scratch, err := s.newScratch(sl.dir)
	if err != nil {
		s.putSlot(sl)
		return nil, err
	}
	setTMPDIR(cmd, scratch)
	if s.cloneflags&unix.CLONE_NEWUSER != 0 {
		// A worker in a user namespace without a uid map was seen, now and then, refused by
		// the owner bits of its own scratch directory as if it were another user. The
		// directory is open to all; no one else can find it (its parents cannot be listed
		// and its name is random) and other workers are kept out of it by Landlock.
		if err := os.Chmod(scratch, 0o777); err != nil {
			s.putSlot(sl)
			return nil, fmt.Errorf("opening the scratch directory: %w", err)
		}
	}
	if attr := cmd.SysProcAttr; attr != nil && attr.Credential != nil {
		// The worker runs as another user (--worker-user): the scratch directory is its own.
		if err := os.Chown(scratch, int(attr.Credential.Uid), int(attr.Credential.Gid)); err != nil {
			s.putSlot(sl)
			return nil, fmt.Errorf("giving the scratch directory to the worker's user: %w", err)
		}
	}
	if s.cloneflags != 0 {
		attr := syscall.SysProcAttr{}
		if cmd.SysProcAttr != nil {
			attr = *cmd.SysProcAttr
		}
		attr.Cloneflags |= s.cloneflags
		if attr.Credential != nil {
			attr.Cloneflags &^= unix.CLONE_NEWUSER
		}
		cmd.SysProcAttr = &attr
	}
	errc := make(chan error, 1)
	sl.jobs <- func() { errc <- fork() }
	if err := <-errc; err != nil {
		s.putSlot(sl)
		return nil, err
	}
	return func() { s.putSlot(sl) }, nil
}

func setTMPDIR(cmd *exec.Cmd, dir string) {
	cmd.Env = append(slices.DeleteFunc(slices.Clone(cmd.Env), func(kv string) bool { return strings.HasPrefix(kv, "TMPDIR=") }),
		"TMPDIR="+dir)
}

// slot is a confined OS thread with its directory.
type slot struct {
	dir  string
	jobs chan func()   // run on the slot's thread; closed to end it
	done chan struct{} // closed when the thread has ended
	// idleSince is when it was last given back; guarded by the Sandbox's mu.
	idleSince time.Time
}

// maxIdleSlots bounds the parked threads kept for later workers, and idleSlotTime how long one
// is kept unused: a burst's threads go soon after it, and an idle relayd holds none.
const (
	maxIdleSlots = 256
	idleSlotTime = time.Second
)

// slot returns an idle slot, or a new one.
func (s *Sandbox) slot() (*slot, error) {
	s.mu.Lock()
	if n := len(s.idle); n > 0 {
		sl := s.idle[n-1]
		s.idle = s.idle[:n-1]
		s.mu.Unlock()
		return sl, nil
	}
	s.mu.Unlock()
	return s.newSlot()
}

// newSlot makes a slot: its directory, and its thread, confined with a domain that lets it
// write beneath that directory (and the policy's writable paths) alone.
func (s *Sandbox) newSlot() (*slot, error) {
	// A slot's name need not be secret: each worker's TMPDIR in it has a random one.
	dir := filepath.Join(s.root, "s"+strconv.FormatUint(s.slots.Add(1), 10))
	// Mode 0711, like the root: a worker of another user (--worker-user) must pass through it
	// to its scratch directory, and none may list it.
	if err := os.Mkdir(dir, 0o711); err != nil {
		return nil, fmt.Errorf("making a slot directory: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil { // Past the umask.
		os.Remove(dir)
		return nil, fmt.Errorf("making a slot directory: %w", err)
	}
	ruleset := -1
	if s.abi > 0 {
		rules, err := s.openRules(dir)
		if err == nil {
			ruleset, err = newRuleset(s.attr, rules)
			closeRules(rules)
		}
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		defer unix.Close(ruleset)
	}
	sl := &slot{dir: dir, jobs: make(chan func()), done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		defer close(sl.done)
		// Never unlocked: the thread ends with this goroutine and takes its confinement along.
		// The runtime never clones a new thread from a locked one (it asks its template
		// thread), so no other thread of relayd inherits it.
		runtime.LockOSThread()
		err := s.confine(ruleset)
		started <- err
		if err != nil {
			return
		}
		for job := range sl.jobs {
			job()
		}
	}()
	if err := <-started; err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return sl, nil
}

// putSlot empties a slot's directory and parks the slot for the next worker. A slot whose
// directory cannot be emptied, or one too many, or any after Close, is ended instead.
func (s *Sandbox) putSlot(sl *slot) {
	ok := emptyDir(sl.dir) == nil
	s.mu.Lock()
	if ok && !s.closed && len(s.idle) < maxIdleSlots {
		sl.idleSince = time.Now()
		s.idle = append(s.idle, sl)
		if s.trim == nil {
			s.trim = time.AfterFunc(idleSlotTime, s.trimIdle)
		}
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	endSlot(sl)
}

// trimIdle ends the slots unused for idleSlotTime.
func (s *Sandbox) trimIdle() {
	s.mu.Lock()
	s.trim = nil
	var old []*slot
	cutoff := time.Now().Add(-idleSlotTime)
	for len(s.idle) > 0 && !s.idle[0].idleSince.After(cutoff) {
		old = append(old, s.idle[0])
		s.idle = s.idle[1:]
	}
	if len(s.idle) > 0 && !s.closed {
		s.trim = time.AfterFunc(time.Until(s.idle[0].idleSince.Add(idleSlotTime)), s.trimIdle)
	}
	s.mu.Unlock()
	for _, sl := range old {
		endSlot(sl)
	}
}

// endSlot ends a slot's thread and removes its directory.
func endSlot(sl *slot) {
	close(sl.jobs)
	<-sl.done
	os.RemoveAll(sl.dir)
}

// emptyDir removes everything in dir but dir itself, making unreadable directories a worker
// left readable again first.
func emptyDir(dir string) error {
	os.Chmod(dir, 0o711)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if err := os.RemoveAll(path); err != nil {
			filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
				if d != nil && d.IsDir() {
					os.Chmod(p, 0o700)
				}
				return nil
			})
			if err := os.RemoveAll(path); err != nil {
				return err
			}
		}
	}
	return nil
}

// scratchPrefix begins the name of a sandbox's directory of scratch directories, followed by
// the pid of the relayd that made it.
const scratchPrefix = "relayd-scratch-"

// removeStale removes what a relayd that is gone (killed, so that it could not clean up) left
// in parent: directories named after its pid, owned by this user, whose pid no process has.
// A pid used again by another process keeps its directory; that errs on the safe side.
func removeStale(parent string) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), scratchPrefix)
		pidText, _, ok2 := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || !ok2 || err != nil || pid <= 0 || !e.IsDir() {
			continue
		}
		var st unix.Stat_t
		path := filepath.Join(parent, e.Name())
		if unix.Lstat(path, &st) != nil || int(st.Uid) != os.Geteuid() {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			os.RemoveAll(path)
		}
	}
}

// newScratch makes a directory in parent with a name of 128 random bits, so that a worker,
// which cannot list the parent, cannot guess it either. The name is short (base64, 22
// characters): a worker may make a Unix socket in its TMPDIR, and socket paths are limited to
// 108 bytes.
func (s *Sandbox) newScratch(parent string) (string, error) {
	var b [16]byte
	rand.Read(b[:])
	dir := filepath.Join(parent, "w"+base64.RawURLEncoding.EncodeToString(b[:]))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("making a scratch directory: %w", err)
	}
	return dir, nil
}

// openRules opens the paths of a slot's Landlock rules: the read-only view, the policy's
// writable paths, and the slot's own directory dir.
func (s *Sandbox) openRules(dir string) ([]pathRule, error) {
	rules, err := readOnlyRules()
	if err != nil {
		return nil, err
	}
	for _, p := range append(slices.Clip(s.policy.Writable), dir) {
		r, err := openRule(p, fsWritable)
		if err != nil {
			closeRules(rules)
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// confine applies no_new_privs, the Landlock ruleset and the seccomp filter to the calling
// thread.
func (s *Sandbox) confine(ruleset int) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	if ruleset >= 0 {
		if err := restrictThread(ruleset); err != nil {
			return err
		}
	}
	if s.prog != nil {
		if err := loadSeccomp(s.prog); err != nil {
			return err
		}
	}
	return nil
}

// hasCapability reports whether capability c is in the process's effective set.
func hasCapability(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}
