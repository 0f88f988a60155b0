package ipc

import (
	"bufio"
	"errors"
	"io"
)

// ErrTooLarge reports a line longer than the reader's limit. The reader has skipped the rest of
// that line and can go on reading.
var ErrTooLarge = errors.New("line too large")

// LineReader reads newline-terminated lines of bounded length.
type LineReader struct {
	r    *bufio.Reader
	max  int
	buf  []byte
	head []byte // the start of the last line refused as too large
}

// keepBytes is the largest line buffer a LineReader keeps between lines.
const keepBytes = 64 << 10

// headBytes is how much of a refused line Head keeps.
const headBytes = 4 << 10

// NewLineReader returns a LineReader that refuses lines longer than limit bytes, reading
// through a buffer of up to 64 KiB.
func NewLineReader(r io.Reader, limit int) *LineReader {
	return NewLineReaderSize(r, limit, 64<<10)
}

// NewLineReaderSize is NewLineReader with a read buffer of size bytes (at most limit+1);
// longer lines are assembled from several reads.
func NewLineReaderSize(r io.Reader, limit, size int) *LineReader {
	size = max(16, min(size, limit+1))
	return &LineReader{r: bufio.NewReaderSize(r, size), max: limit}
}

// ReadLine returns the next line without its newline. The slice is valid until the next call.
// A final line without a newline is returned as a line; after it comes io.EOF. A line over the
// limit yields ErrTooLarge once, after which reading resumes at the next line.
func (l *LineReader) ReadLine() ([]byte, error) {
	if cap(l.buf) > keepBytes {
		// One long line must not pin its buffer for the life of the reader.
		l.buf = nil
	}
	l.buf = l.buf[:0]
	tooLarge := false
	for {
		frag, err := l.r.ReadSlice('\n')
		if !tooLarge {
			if len(l.buf)+len(frag) > l.max+1 || (err == nil && len(l.buf)+len(frag)-1 > l.max) {
				tooLarge = true
				l.head = append(append(l.head[:0], l.buf[:min(len(l.buf), headBytes)]...), frag[:min(len(frag), headBytes-min(len(l.buf), headBytes))]...)
				l.buf = l.buf[:0]
			} else {
				l.buf = append(l.buf, frag...)
			}
		}
		switch {
		case err == nil:
			if tooLarge {
				return nil, ErrTooLarge
			}
			return l.buf[:len(l.buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case tooLarge:
			return nil, ErrTooLarge
		case len(l.buf) > 0 && errors.Is(err, io.EOF):
			return l.buf, nil
		default:
			return nil, err
		}
	}
}

// Buffered reports how many bytes of a partial line are waiting in the reader.
func (l *LineReader) Buffered() int { return l.r.Buffered() }

// Head returns the first bytes of the line last refused with ErrTooLarge, so that its id can
// still be found (see SniffID).
func (l *LineReader) Head() []byte { return l.head }
