package main

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// TestSVG draws a report of made-up measurements and checks that the result is well-formed
// SVG with a CDF per variant at one and at eight clients and a throughput line per variant.
func TestSVG(t *testing.T) {
	mk := func(name, group string, c int, base int64, tput float64) *variant {
		h := hdrhistogram.New(1, 30_000_000, 3)
		for i := range int64(1000) {
			h.RecordValue(base + i*base/500)
		}
		return &variant{name: name, group: group, nclients: c, hist: h, msgs: 1000, wall: time.Duration(1000 / tput * float64(time.Second))}
	}
	r := &report{variants: []*variant{
		mk("floor: empty Go binary", groupFloor, 1, 700, 1200),
		mk("relayd", groupRelayd, 1, 1200, 800),
		mk("relayd --max-requests=1000", groupMaxRequests, 1, 70, 12000),
		mk("floor: empty Go binary", groupFloor, 8, 2900, 2300),
		mk("relayd", groupRelayd, 8, 5700, 1200),
	}}
	svg := r.svg()
	d := xml.NewDecoder(strings.NewReader(svg))
	counts := map[string]int{}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok {
			counts[se.Name.Local]++
		}
	}
	// Three variants at 1 client, two at 8; two throughput lines (the long-lived variant is
	// not on it, having no point at 8 clients).
	if got, want := counts["polyline"], 3+2+2; got != want {
		t.Errorf("%d polylines, want %d", got, want)
	}
	for _, want := range []string{"Latency, 1 client", "Latency, 8 clients", "Throughput against clients", "relayd (p50 "} {
		if !strings.Contains(svg, want) {
			t.Errorf("the SVG has no %q", want)
		}
	}
	if strings.Contains(svg, "NaN") || strings.Contains(svg, "Inf") {
		t.Errorf("the SVG has a coordinate that is not a number")
	}
	if (&report{}).svg() != "" {
		t.Errorf("an empty report draws something")
	}
}
