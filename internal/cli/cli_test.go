package cli

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestFlagUsages(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Bool("json", false, "print JSON")
	fs.BoolP("help", "h", false, "show this help")
	fs.Bool("on", true, "on by default")
	fs.String("socket", "", "socket `path`")
	got := FlagUsages(fs, 0)
	want := "      --json          print JSON\n" +
		"  -h, --help          show this help\n" +
		"      --on            on by default (default true)\n" +
		"      --socket path   socket path\n"
	if got != want {
		t.Errorf("FlagUsages =\n%s\nwant\n%s", got, want)
	}
	// The flag set itself still parses booleans as before.
	if err := fs.Parse([]string{"--json", "--on=false"}); err != nil {
		t.Fatal(err)
	}
	if v, _ := fs.GetBool("json"); !v {
		t.Error("--json did not set json")
	}
	if v, _ := fs.GetBool("on"); v {
		t.Error("--on=false did not clear on")
	}
}

func TestVersion(t *testing.T) {
	if got, want := Version("relayd", "1.2.3"), "relayd 1.2.3"; got != want {
		t.Errorf("Version = %q, want %q", got, want)
	}
	// A test binary has no module version: the line is the name and "devel", maybe with a commit.
	if got := Version("worker", ""); !strings.HasPrefix(got, "worker devel") {
		t.Errorf("Version = %q, want it to start with %q", got, "worker devel")
	}
}

func TestUsageError(t *testing.T) {
	err := Usagef("--spares must not be negative, not %d", -1)
	if !IsUsage(err) || err.Error() != "--spares must not be negative, not -1" {
		t.Errorf("Usagef = %v (usage %v)", err, IsUsage(err))
	}
	if got, want := Hint("relay-echo"), "Run 'relay-echo --help' for usage."; got != want {
		t.Errorf("Hint = %q, want %q", got, want)
	}
}
