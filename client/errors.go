package client

import "errors"

var (
	// ErrBackpressure is returned by Publish under PolicyError while the
	// sidecar asks producers to pause or the ring is full.
	ErrBackpressure = errors.New("client: backpressure: the bus asks producers to pause or the ring is full")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("client: publisher closed")
	// ErrTooLarge means a frame (or batch) can never fit the ring: ask for
	// larger rings (Config.RingBytes) or publish smaller frames.
	ErrTooLarge = errors.New("client: frame larger than the ring allows")
	// ErrRefused means the sidecar refused the attachment; the error text
	// carries its code and reason.
	ErrRefused = errors.New("client: sidecar refused the attachment")
	// ErrNoSidecar means no sidecar answers on the socket: start it
	// (framebus run) or point Config.RunDir/Name at the right one.
	ErrNoSidecar = errors.New("client: no sidecar on the socket")
	// ErrLost means the ring this publisher wrote to is gone (the sidecar
	// was restarted with a new segment, or detached this publisher): frames
	// published since the last WaitDurable may not be durable. Dial again.
	ErrLost = errors.New("client: the publisher's ring is gone")
)
