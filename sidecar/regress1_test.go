package sidecar

import (
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
)

// subscribers share the segment and directory with drivers, with no
// reservation: two default subscriptions lock every driver out.
func TestSubscribersStarveDrivers(t *testing.T) {
	cfg := testConfig(t) // ring_bytes 1 MiB, shm_bytes default: room for 8 rings of 1 MiB
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		sub, err := client.Subscribe(ctx, client.Filter{}, client.Latest(), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir})
		if err != nil {
			t.Fatalf("subscription %d: %v", i, err)
		}
		defer sub.Close()
	}
	p, err := client.Dial(ctx, client.Config{Name: cfg.Name, RunDir: cfg.RunDir, Producer: "drv"})
	if err != nil {
		t.Errorf("a driver cannot attach after two default subscriptions: %v", err)
		return
	}
	p.Close()
}

// a refused subscription still creates its durable cursor, which then
// holds retention (cursor_policy retain) with nobody to ack it.
func TestRefusedSubscriptionLeaksCursor(t *testing.T) {
	cfg := testConfig(t)
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.Subscribe(ctx, client.Filter{}, client.Cursor("ghost"), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir, RingBytes: 1000})
	t.Logf("Subscribe: %v", err)
	if c, ok := s.wal.Cursors()["ghost"]; ok {
		t.Errorf("refused subscription left cursor ghost (acked %d) holding retention; nothing in the sidecar or CLI deletes cursors", c.Acked)
	}
}

// at Shutdown a live subscription's egress ring is queued for
// afterDrainPass after the drain loop has exited: never freed, so the
// segment is not removed at a clean shutdown.
func TestLiveRingNotFreedAtShutdown(t *testing.T) {
	cfg := testConfig(t)
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := client.Subscribe(ctx, client.Filter{}, client.Latest(), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir, Live: os.Getenv("NOLIVE") == ""})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	seg := s.Segment()
	path := seg.Path()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err == nil {
		t.Errorf("segment %s left behind after a clean shutdown with no driver attached (the live egress ring was never freed)", path)
	}
}

// subscriber labels collide (cursor "http-1" vs the first HTTP event
// stream): the collector emits duplicate series and Gather fails.
func TestMetricLabelCollision(t *testing.T) {
	cfg := testConfig(t, "--http-addr", "127.0.0.1:0")
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+s.apiAddr+"/v1/frames", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sub, err := client.Subscribe(ctx, client.Filter{}, client.Cursor("http-1"), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := s.m.reg.Gather(); err != nil {
		t.Errorf("/metrics fails: %v", err)
	}
}
