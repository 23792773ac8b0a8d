package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/framebus/framebus/sidecar"
	"github.com/framebus/framebus/wal"
)

// exitWALDamaged is `framebus run`'s exit status when the WAL is damaged
// and wal_recover is off (documented in `framebus run -h` and
// docs/wal-recovery.md): a service manager can tell it from other failures
// and not restart in a loop (systemd: RestartPreventExitStatus=3).
const exitWALDamaged = 3

// runMain is `framebus run`: the sidecar daemon.
func runMain(args []string, stdout, stderr io.Writer) int {
	cfg, info, err := sidecar.LoadConfig(args, os.Environ())
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "framebus run: invalid configuration:\n%v\n", err)
		return 2
	}
	if info.PrintConfig {
		stdout.Write(cfg.TOML())
		return 0
	}
	log := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	for _, v := range info.Ignored {
		log.Warn("ignoring unknown environment variable", "name", v)
	}
	s, err := sidecar.New(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "framebus run:", err)
		if errors.Is(err, wal.ErrCorrupt) {
			return exitWALDamaged
		}
		return 1
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	got := <-sig
	log.Info("stopping: draining rings and committing the WAL (send the signal again to exit at once)", "signal", got.String())
	go func() {
		<-sig
		log.Error("second signal: exiting without draining; committed frames are safe, the rest stays in shared memory")
		os.Exit(1)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		log.Error("shutdown", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
