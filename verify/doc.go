// Package verify checks the files smolbottle's renderers write under
// ../testdata/emit against the parsers their consumers really use: a strict
// TOML 1.0 parser for smolvm's Smolfile, and gopkg.in/yaml.v3 v3.0.1 (the
// version gvproxy v0.8.9 and pipelock build with) for the YAML configs, each
// decoding into a mirror of the consumer's schema with unknown keys
// rejected. It is a separate, test-only module so that the main module
// keeps zero dependencies; nothing here is imported by smolbottle.
//
// quote_copy.go is ../quote.go with its package clause changed, so that the
// quoting functions can be fuzzed against the real parsers (package main
// cannot be imported). TestQuoteCopyCurrent fails when it drifts.
package verify

//go:generate sh -c "sed 's/^package main$/package verify/' ../quote.go > quote_copy.go"
