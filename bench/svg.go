package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// The pictures of a run, written by hand as SVG so that the bench needs no plotting library:
// the latency distribution of every variant that starts a process per message (a CDF on a log
// scale, one panel for one client and one for eight), and the throughput of every variant
// against the number of clients. People compare curves faster than tables.

// svgPalette colours the variants in the order the report lists them, the same in every panel.
var svgPalette = []string{
	"#7f7f7f", "#1f77b4", "#d62728", "#ff7f0e", "#e377c2", "#9467bd", "#2ca02c", "#17becf",
	"#8c564b", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
}

// colors assigns each variant name a colour of svgPalette, in the order of r.variants.
func (r *report) colors() map[string]string {
	m := map[string]string{}
	for _, v := range r.variants {
		if _, ok := m[v.name]; !ok {
			m[v.name] = svgPalette[len(m)%len(svgPalette)]
		}
	}
	return m
}

const (
	svgWidth  = 1060
	svgPanelH = 340
	svgLeft   = 70  // room for the y axis labels
	svgRight  = 410 // room for the legend
	svgTop    = 40
	svgBottom = 50
)

// svg returns the pictures of the run, or "" when it measured no interleaved variant.
func (r *report) svg() string {
	var panels []string
	for _, c := range []int{1, 8} {
		if p := r.cdfPanel(c, len(panels)); p != "" {
			panels = append(panels, p)
		}
	}
	if p := r.throughputPanel(len(panels)); p != "" {
		panels = append(panels, p)
	}
	if len(panels) == 0 {
		return ""
	}
	var b strings.Builder
	h := len(panels) * svgPanelH
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgWidth, h, svgWidth, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgWidth, h)
	for _, p := range panels {
		b.WriteString(p)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// plot maps data to the drawing area of panel i.
type plot struct {
	x0, x1, y0, y1 float64 // the area in pixels: left, right, bottom, top
	xmin, xmax     float64 // data range on x (log10 of it when xlog)
	ymin, ymax     float64
	xlog           bool
}

func newPlot(panel int) plot {
	top := float64(panel*svgPanelH + svgTop)
	return plot{x0: svgLeft, x1: svgWidth - svgRight, y0: top + svgPanelH - svgTop - svgBottom, y1: top}
}

func (p plot) x(v float64) float64 {
	if p.xlog {
		v = math.Log10(v)
	}
	return p.x0 + (v-p.xmin)/(p.xmax-p.xmin)*(p.x1-p.x0)
}

func (p plot) y(v float64) float64 { return p.y0 - (v-p.ymin)/(p.ymax-p.ymin)*(p.y0-p.y1) }

// frame draws the title, the axes' box and their labels.
func (p plot) frame(b *strings.Builder, title, xlabel, ylabel string) {
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" font-size="14" font-weight="bold">%s</text>`+"\n", p.x0, p.y1-14, esc(title))
	fmt.Fprintf(b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", p.x0, p.y1, p.x1-p.x0, p.y0-p.y1)
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`+"\n", (p.x0+p.x1)/2, p.y0+36, esc(xlabel))
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" text-anchor="middle" transform="rotate(-90 %.0f %.0f)">%s</text>`+"\n", p.x0-52, (p.y0+p.y1)/2, p.x0-52, (p.y0+p.y1)/2, esc(ylabel))
}

func (p plot) xtick(b *strings.Builder, v float64, label string) {
	x := p.x(v)
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#ddd"/>`, x, p.y0, x, p.y1)
	fmt.Fprintf(b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x, p.y0+16, esc(label))
}

func (p plot) ytick(b *strings.Builder, v float64, label string) {
	y := p.y(v)
	fmt.Fprintf(b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/>`, p.x0, y, p.x1, y)
	fmt.Fprintf(b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", p.x0-6, y+4, esc(label))
}

// legend writes entry i of n, one a line, right of the plot; the lines close up when there
// are many, so that the legend stays within its panel.
func (p plot) legend(b *strings.Builder, i, n int, color, label string, dashed bool) {
	step := min(18, (p.y0-p.y1+svgBottom-20)/float64(max(n, 1)))
	x, y := p.x1+14, p.y1+12+float64(i)*step
	dash := ""
	if dashed {
		dash = ` stroke-dasharray="5 3"`
	}
	fmt.Fprintf(b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2"%s/>`, x, y-4, x+22, y-4, color, dash)
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" font-size="11">%s</text>`+"\n", x+28, y, esc(label))
}

func polyline(b *strings.Builder, pts [][2]float64, color string, dashed bool) {
	if len(pts) == 0 {
		return
	}
	dash := ""
	if dashed {
		dash = ` stroke-dasharray="5 3"`
	}
	fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="`, color, dash)
	for i, pt := range pts {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(b, "%.1f,%.1f", pt[0], pt[1])
	}
	b.WriteString(`"/>` + "\n")
}

// cdfQuantiles are the quantiles (in percent) each CDF is drawn through: finely spaced in the
// tail, where the variants differ most.
var cdfQuantiles = func() []float64 {
	var qs []float64
	for q := 0.0; q < 90; q += 1 {
		qs = append(qs, q)
	}
	for q := 90.0; q < 99; q += 0.25 {
		qs = append(qs, q)
	}
	for q := 99.0; q <= 100; q += 0.05 {
		qs = append(qs, q)
	}
	return qs
}()

// cdfPanel draws the latency CDF of the variants measured with c clients.
func (r *report) cdfPanel(c, panel int) string {
	var vs []*variant
	for _, v := range r.variants {
		if v.nclients == c && v.msgs > 0 && v.hist != nil {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return ""
	}
	lo, hi := math.Inf(1), 0.0
	for _, v := range vs {
		lo = min(lo, float64(max(v.hist.ValueAtQuantile(0), 1)))
		hi = max(hi, float64(v.hist.ValueAtQuantile(100)))
	}
	p := newPlot(panel)
	p.xlog = true
	p.xmin, p.xmax = math.Floor(math.Log10(lo)), math.Ceil(math.Log10(max(hi, lo*10)))
	p.ymin, p.ymax = 0, 1
	var b strings.Builder
	noun := "client"
	if c > 1 {
		noun = "clients"
	}
	p.frame(&b, fmt.Sprintf("Latency, %d %s: fraction of messages answered within x", c, noun), "latency (µs, log scale)", "fraction of messages")
	for e := p.xmin; e <= p.xmax; e++ {
		p.xtick(&b, math.Pow(10, e), fmt.Sprintf("%.0f", math.Pow(10, e)))
		for _, m := range []float64{2, 5} {
			if v := math.Pow(10, e) * m; e < p.xmax {
				p.xtick(&b, v, "")
			}
		}
	}
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 0.9, 0.99, 1} {
		p.ytick(&b, f, fmt.Sprintf("%g", f))
	}
	colors := r.colors()
	for i, v := range vs {
		var pts [][2]float64
		for _, q := range cdfQuantiles {
			pts = append(pts, [2]float64{p.x(float64(max(v.hist.ValueAtQuantile(q), 1))), p.y(q / 100)})
		}
		dashed := longLived(v.group)
		polyline(&b, pts, colors[v.name], dashed)
		p.legend(&b, i, len(vs), colors[v.name], fmt.Sprintf("%s (p50 %s µs)", v.name, us(v.quantile(50))), dashed)
	}
	return b.String()
}

// throughputPanel draws messages per second against clients, one line per variant.
func (r *report) throughputPanel(panel int) string {
	type line struct {
		name, group string
		pts         map[int]float64
	}
	var lines []*line
	clients := map[int]bool{}
	top := 0.0
	for _, v := range r.variants {
		if v.msgs == 0 || v.pace > 0 || longLived(v.group) {
			continue
		}
		i := slices.IndexFunc(lines, func(l *line) bool { return l.name == v.name })
		if i < 0 {
			lines = append(lines, &line{name: v.name, group: v.group, pts: map[int]float64{}})
			i = len(lines) - 1
		}
		lines[i].pts[v.nclients] = v.throughput()
		clients[v.nclients] = true
		top = max(top, v.throughput())
	}
	if len(lines) == 0 || len(clients) < 2 {
		return ""
	}
	cs := make([]int, 0, len(clients))
	for c := range clients {
		cs = append(cs, c)
	}
	slices.Sort(cs)
	p := newPlot(panel)
	p.xlog = true
	p.xmin, p.xmax = math.Log10(float64(cs[0]))-0.1, math.Log10(float64(cs[len(cs)-1]))+0.1
	step := niceStep(top / 5)
	p.ymin, p.ymax = 0, math.Ceil(top*1.05/step)*step
	var b strings.Builder
	p.frame(&b, "Throughput against clients (a process per message)", "clients (each sequential, log scale)", "messages per second")
	for _, c := range cs {
		p.xtick(&b, float64(c), fmt.Sprint(c))
	}
	for y := 0.0; y <= p.ymax; y += step {
		p.ytick(&b, y, fmt.Sprintf("%.0f", y))
	}
	colors := r.colors()
	for i, l := range lines {
		var pts [][2]float64
		for _, c := range cs {
			if t, ok := l.pts[c]; ok {
				pts = append(pts, [2]float64{p.x(float64(c)), p.y(t)})
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", p.x(float64(c)), p.y(t), colors[l.name])
			}
		}
		polyline(&b, pts, colors[l.name], false)
		p.legend(&b, i, len(lines), colors[l.name], l.name, false)
	}
	return b.String()
}

// niceStep rounds a step up to 1, 2 or 5 times a power of ten.
func niceStep(s float64) float64 {
	if s <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(s)))
	for _, m := range []float64{1, 2, 5, 10} {
		if s <= m*e {
			return m * e
		}
	}
	return 10 * e
}

// esc escapes text for SVG.
func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
