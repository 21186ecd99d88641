package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// row is one line of the report: a metric for imbridge and its baseline.
type row struct {
	scenario, metric, unit string
	bridge, base           float64 // NaN: not measured
	baseName               string  // what the baseline is, when not bare mochi
	goal                   string  // the target, as text
	check                  func(bridge, base float64) bool
}

func (r row) ratio() float64 { return r.bridge / r.base }

func (r row) verdict() string {
	if r.check == nil || math.IsNaN(r.bridge) {
		return ""
	}
	if r.check(r.bridge, r.base) {
		return "met"
	}
	return "**missed**"
}

func num(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "–"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// markdown writes the report as a Markdown table.
func markdown(w io.Writer, rows []row, header string) {
	fmt.Fprintf(w, "%s\n\n", header)
	fmt.Fprintln(w, "| scenario | metric | imbridge | baseline | ratio | target | |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---|---|")
	for _, r := range rows {
		base := num(r.base)
		if r.baseName != "" && !math.IsNaN(r.base) {
			base += " (" + r.baseName + ")"
		}
		ratio := ""
		if !math.IsNaN(r.base) && r.base != 0 {
			ratio = num(r.ratio()) + "x"
		}
		fmt.Fprintf(w, "| %s | %s (%s) | %s | %s | %s | %s | %s |\n",
			r.scenario, r.metric, r.unit, num(r.bridge), base, ratio, r.goal, r.verdict())
	}
}

// text writes the report as an aligned plain-text table.
func text(w io.Writer, rows []row) {
	fmt.Fprintf(w, "%-42s %-44s %12s %12s %8s  %s\n", "scenario", "metric", "imbridge", "baseline", "ratio", "target")
	fmt.Fprintln(w, strings.Repeat("-", 140))
	for _, r := range rows {
		ratio := ""
		if !math.IsNaN(r.base) && r.base != 0 {
			ratio = num(r.ratio()) + "x"
		}
		fmt.Fprintf(w, "%-42s %-44s %12s %12s %8s  %s %s\n", r.scenario, r.metric+" ("+r.unit+")",
			num(r.bridge), num(r.base), ratio, r.goal, r.verdict())
	}
}

// cdfPlot draws the latency distributions as cumulative curves on a log
// scale, one line per series, into a PNG file.
func cdfPlot(path, title string, series map[string][]time.Duration) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "latency (µs, log scale)"
	p.Y.Label.Text = "fraction of messages at or below"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	for _, name := range []string{kindBare, kindBridge} {
		sorted := series[name]
		if len(sorted) == 0 {
			continue
		}
		step := max(1, len(sorted)/500)
		var pts plotter.XYs
		for j := 0; j < len(sorted); j += step {
			pts = append(pts, plotter.XY{X: math.Max(1, float64(sorted[j])/1e3), Y: float64(j+1) / float64(len(sorted))})
		}
		pts = append(pts, plotter.XY{X: math.Max(1, float64(sorted[len(sorted)-1])/1e3), Y: 1})
		line, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		line.Width = vg.Points(2)
		if name == kindBridge {
			line.Color = plotColor(0)
		} else {
			line.Color = plotColor(1)
		}
		p.Add(line)
		p.Legend.Add(name, line)
	}
	return p.Save(8*vg.Inch, 4.5*vg.Inch, path)
}
