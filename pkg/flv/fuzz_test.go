package flv

import (
	"bytes"
	"os"
	"testing"
)

// FuzzReader feeds arbitrary bytes to the strict reader: it must return tags that
// pass Check or an error, never panic, and never allocate past its limit.
func FuzzReader(f *testing.F) {
	if demo, err := os.ReadFile("../../testdata/demo.flv"); err == nil {
		f.Add(demo[:min(len(demo), 4096)])
	}
	_, tag := NewTag(0, TypeVideo, 40, []byte{0x17, 1, 0, 0, 0, 9})
	f.Add(append(FileHeader(true, true), tag...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), 1<<20)
		if r.ReadHeader() != nil {
			return
		}
		for i := 0; i < 1000; i++ {
			tag, err := r.ReadTag()
			if err != nil {
				return
			}
			if err := tag.Check(); err != nil {
				t.Fatalf("reader returned a bad tag: %v", err)
			}
			Classify(tag.Type(), tag.Body())
		}
	})
}

// FuzzParseMetadata: hostile AMF0 must give a value or ErrAMF, never a panic.
func FuzzParseMetadata(f *testing.F) {
	name := append([]byte{2, 0, 10}, "onMetaData"...)
	f.Add(append(append([]byte{}, name...), 8, 0, 0, 0, 1, 0, 5, 'w', 'i', 'd', 't', 'h', 0, 0x40, 0x84, 0, 0, 0, 0, 0, 0, 0, 0, 9))
	f.Add(append(append([]byte{}, name...), 3, 0, 1, 'a', 0x0A, 0, 0, 0, 2, 1, 1, 5, 0, 0, 9))
	f.Fuzz(func(t *testing.T, data []byte) {
		md, err := ParseMetadata(data)
		if err == nil && md == nil {
			t.Fatal("nil metadata without error")
		}
		Classify(TypeScript, data)
		Classify(TypeVideo, data)
		Classify(TypeAudio, data)
	})
}
