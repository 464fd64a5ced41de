package harness

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Skip skips the test with the reason, except under CI=true, where nothing may be
// skipped silently: there it fails the test with the same reason.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	why := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: not skipped)", why)
	}
	t.Skip(why)
}

// NeedTools skips the test when an external tool is missing (fails it under
// CI=true, where a missing tool is a broken machine).
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Skip(t, "%s not installed: %v", tool, err)
		}
	}
}
