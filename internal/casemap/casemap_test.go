package casemap

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/language"
)

func TestUpper(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"hello world", "HELLO WORLD"},
		{"straße", "STRASSE"},
		{"ﬁle ﬂow", "FILE FLOW"},
		{"ﬀ ﬃ ﬄ ﬅ ﬆ", "FF FFI FFL ST ST"},
		{"Maße und Gewichte", "MASSE UND GEWICHTE"},
		{"ŉ", "ʼN"},
		{"ǰ", "J̌"},
		{"ΐ", "\u0399\u0308\u0301"},
		{"ᾳ", "ΑΙ"},
		{"ﬓ", "ՄՆ"},
		{"և", "ԵՒ"},
		{"ẞ", "ẞ"},                   // already capital
		{"éàü çñ", "ÉÀÜ ÇÑ"},         // one rune to one rune, as strings.ToUpper
		{"Ǆǅǆ", "ǄǄǄ"},               // titlecase digraphs
		{"ab\xffcd", "AB\uFFFDCD"},   // invalid UTF-8, as strings.ToUpper
		{"ß\xff", "SS\uFFFD"},        // the same after a special rune
		{"日本語 123 !?", "日本語 123 !?"}, // nothing to map
	}
	for _, tt := range tests {
		if got := Upper(tt.in); got != tt.want {
			t.Errorf("Upper(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestUpperMatchesCases checks Upper against golang.org/x/text/cases for every rune on its own
// and for random strings of runes with and without special mappings. When it fails after a Go
// or x/text upgrade, run go generate in this directory.
func TestUpperMatchesCases(t *testing.T) {
	c := cases.Upper(language.Und)
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if !utf8.ValidRune(r) {
			continue
		}
		if got, want := Upper(string(r)), c.String(string(r)); got != want {
			t.Errorf("Upper(%q) = %q, x/text/cases says %q", string(r), got, want)
		}
	}
	pool := []rune("aZß ﬁ\u0301ŉΐᾳéi\u0307ΣσςĲ日")
	for i := range len(special) {
		pool = append(pool, special[i].r)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteRune(pool[rng.IntN(len(pool))])
		}
		s := b.String()
		if got, want := Upper(s), c.String(s); got != want {
			t.Errorf("Upper(%q) = %q, x/text/cases says %q", s, got, want)
		}
	}
}

func TestSpecialSorted(t *testing.T) {
	for i := 1; i < len(special); i++ {
		if special[i-1].r >= special[i].r {
			t.Fatalf("special is not sorted at %d: %U after %U", i, special[i].r, special[i-1].r)
		}
	}
}

func BenchmarkUpper(b *testing.B) {
	for _, s := range []string{"hello world", "straße"} {
		b.Run(s, func(b *testing.B) {
			for b.Loop() {
				Upper(s)
			}
		})
	}
}
