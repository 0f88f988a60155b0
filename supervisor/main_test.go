package supervisor

import (
	"os"
	"testing"

	"relayd/internal/testbin"
)

// workerBin is the real worker, built once for the package's tests.
var workerBin string

func TestMain(m *testing.M) { os.Exit(testbin.Main(m, &workerBin)) }
