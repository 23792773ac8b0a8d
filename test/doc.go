// Package test holds framebus's end-to-end suites: they build the real
// framebus binary once, run the sidecar and drivers as separate processes
// in temporary directories, kill them, and check the WAL afterwards.
package test
