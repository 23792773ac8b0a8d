package schema

// The code in fb/ is generated from framebus.fbs by flatc 2.0.8 (Debian's
// flatbuffers-compiler) and committed. Regenerate after editing the schema
// with `go generate ./schema` (or `make generate`); the gofmt step is a no-op
// for flatc 2.0.8 output and is kept so that another flatc version cannot
// leave unformatted files behind. Regenerating an unchanged schema leaves no
// diff.

//go:generate flatc --go --go-namespace fb -o . framebus.fbs
//go:generate gofmt -w fb
