module github.com/framebus/framebus

go 1.26.0

require (
	github.com/edsrzf/mmap-go v1.2.0
	github.com/google/flatbuffers v25.12.19+incompatible
	golang.org/x/sys v0.50.0
)
