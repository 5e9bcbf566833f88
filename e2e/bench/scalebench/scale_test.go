package scalebench

import "testing"

func TestWarningsCountsMessagesMostFrequentFirst(t *testing.T) {
	for _, tc := range []struct {
		name, log, want string
	}{
		{"empty", "", ""},
		{"not json", "panic: boom\n", ""},
		{"counted", `{"level":"warn","message":"a"}` + "\n" + `{"level":"error","message":"b"}` + "\n" + `{"level":"error","message":"b"}` + "\n",
			`error "b" ×2, warn "a" ×1`},
		{"at most four", `{"level":"warn","message":"a"}` + "\n" + `{"level":"warn","message":"b"}` + "\n" + `{"level":"warn","message":"c"}` + "\n" +
			`{"level":"warn","message":"d"}` + "\n" + `{"level":"warn","message":"e"}` + "\n",
			`warn "a" ×1, warn "b" ×1, warn "c" ×1, warn "d" ×1`},
	} {
		if got := warnings(tc.log); got != tc.want {
			t.Errorf("%s: warnings = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestTrafficPerChange(t *testing.T) {
	before := varz{InMsgs: 10, OutMsgs: 20, InBytes: 1000, OutBytes: 2000, InClientMsgs: 5, OutClientMsgs: 10, InClientBytes: 500, OutClientBytes: 1000}
	after := varz{InMsgs: 30, OutMsgs: 60, InBytes: 3000, OutBytes: 6000, InClientMsgs: 15, OutClientMsgs: 30, InClientBytes: 1500, OutClientBytes: 3000}
	got := perChange(after.sub(before), 10)
	want := "6.0 msgs 600B per change (in 2.0/200B, out 4.0/400B; with clients alone in 1.0/100B, out 2.0/200B)"
	if got != want {
		t.Errorf("perChange = %q, want %q", got, want)
	}
	if got := perChange(varz{}, 0); got != "0.0 msgs 0B per change (in 0.0/0B, out 0.0/0B; with clients alone in 0.0/0B, out 0.0/0B)" {
		t.Errorf("perChange of nothing = %q", got)
	}
}
