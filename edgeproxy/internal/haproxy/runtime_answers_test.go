package haproxy

import (
	"bufio"
	"slices"
	"strings"
	"testing"
)

// The shapes of interactive answers: HAProxy ends each with a newline (an empty answer is the
// newline alone) and the prompt; blank lines inside an answer, and a "> " not after a newline,
// belong to the answer.
func TestReadAnswers(t *testing.T) {
	long := strings.Repeat("x", 300)
	for _, tt := range []struct {
		name, stream string
		n            int
		want         []string
		rest         string
	}{
		{"prompt only", "\n> ", 1, []string{""}, ""},
		{"one line", "1\n> ", 1, []string{"1"}, ""},
		{"empty answers in a row", "\n> \n> ok\n> ", 3, []string{"", "", "ok"}, ""},
		{"lines and a blank line", "Name: HAProxy\nStopping: 0\n\n> ", 1, []string{"Name: HAProxy\nStopping: 0"}, ""},
		{"blank line inside", "a\n\nb\n> ", 1, []string{"a\n\nb"}, ""},
		{"a > inside a line", "x > y\n> ", 1, []string{"x > y"}, ""},
		{"longer than the buffer", long + "\n> ", 1, []string{long}, ""},
		{"stops at the last answer", "a\n> b\n> ", 1, []string{"a"}, "b\n> "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := bufio.NewReaderSize(strings.NewReader(tt.stream), 16)
			got, err := readAnswers(r, tt.n)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("answers %q, want %q", got, tt.want)
			}
			rest, _ := r.ReadString(0)
			if rest != tt.rest {
				t.Errorf("left %q unread, want %q", rest, tt.rest)
			}
		})
	}
	if _, err := readAnswers(bufio.NewReader(strings.NewReader("cut off\n")), 1); err == nil {
		t.Error("an answer cut off before its prompt was taken")
	}
}
