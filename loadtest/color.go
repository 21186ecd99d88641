package main

import "image/color"

// plotColor returns the colour of series i: blue for imbridge, grey for the
// baseline.
func plotColor(i int) color.Color {
	if i == 0 {
		return color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	}
	return color.RGBA{R: 0x88, G: 0x88, B: 0x88, A: 0xff}
}
