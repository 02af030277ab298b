// Package verify checks the files smolbottle's renderers write under
// ../testdata/emit against the parsers their consumers really use. It is a
// separate, test-only module so that the main module stays dependency-free.
package verify
