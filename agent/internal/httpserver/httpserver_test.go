package httpserver

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/rs/zerolog"
)

// TestUnboundedStreamOutlivesWriteTimeout: a handler that lifts its deadlines keeps writing past
// the server's write timeout; one that does not is cut off, which shows the timeout is in force.
func TestUnboundedStreamOutlivesWriteTimeout(t *testing.T) {
	for _, lift := range []bool{true, false} {
		var buf logbuf.Buffer
		s := &http.Server{}
		Configure(s, zerolog.New(&buf))
		s.ReadTimeout, s.WriteTimeout = 100*time.Millisecond, 100*time.Millisecond
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if lift {
				if err := Unbounded(w); err != nil {
					t.Error(err)
				}
			}
			w.WriteHeader(200)
			for i := range 3 {
				fmt.Fprintf(w, "line %d\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(200 * time.Millisecond)
			}
		})
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = s.Serve(l) }()
		resp, err := http.Get("http://" + l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			got = append(got, sc.Text())
		}
		resp.Body.Close()
		_ = s.Close()
		if whole := strings.Join(got, ",") == "line 0,line 1,line 2"; whole != lift {
			t.Errorf("deadlines lifted %v: read %q", lift, got)
		}
	}
}
