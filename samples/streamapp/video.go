package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
)

// video is an IVF file's VP8 frames, in memory, played in a loop.
type video struct {
	frames   [][]byte
	interval time.Duration
}

// loadVideo reads a whole VP8 IVF file.
func loadVideo(path string) (*video, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("video: %w", err)
	}
	v, err := parseIVF(raw)
	if err != nil {
		return nil, fmt.Errorf("video %s: %w", path, err)
	}
	return v, nil
}

func parseIVF(raw []byte) (*video, error) {
	r, header, err := ivfreader.NewWith(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	if header.FourCC != "VP80" {
		return nil, fmt.Errorf("codec %q, want VP80 (VP8)", header.FourCC)
	}
	if header.TimebaseDenominator == 0 || header.TimebaseNumerator == 0 {
		return nil, errors.New("no frame rate in the IVF header")
	}
	v := &video{interval: time.Second * time.Duration(header.TimebaseNumerator) / time.Duration(header.TimebaseDenominator)}
	if v.interval < time.Millisecond || v.interval > time.Second {
		return nil, fmt.Errorf("frame interval %s out of range", v.interval)
	}
	for {
		frame, _, err := r.ParseNextFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("frame %d: %w", len(v.frames), err)
		}
		v.frames = append(v.frames, frame)
	}
	if len(v.frames) == 0 {
		return nil, errors.New("no frames")
	}
	return v, nil
}

// fonts are tried in order for the frame counter and clock drawn on the test pattern; without one
// the pattern keeps only the counter testsrc draws itself.
var fonts = []string{
	"/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
	"/usr/share/fonts/truetype/liberation/LiberationMono-Bold.ttf",
}

// genVideoArgs is the ffmpeg command line of the test pattern: a moving testsrc with the frame
// number and the time into the loop, VP8 at 30 frames a second, a key frame every half second so
// a browser that joins shows a picture soon.
func genVideoArgs(out string, seconds int, font string) []string {
	args := []string{"-hide_banner", "-loglevel", "error", "-y",
		"-f", "lavfi", "-i", "testsrc=size=640x360:rate=30", "-t", fmt.Sprint(seconds)}
	if font != "" {
		args = append(args, "-vf", "drawtext=fontfile="+font+
			":text='frame %{frame_num}   t %{pts\\:hms}':x=12:y=12:fontsize=28:fontcolor=white:box=1:boxcolor=black@0.6:boxborderw=6")
	}
	return append(args, "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M",
		"-g", "15", "-keyint_min", "15", "-auto-alt-ref", "0", "-f", "ivf", out)
}

// genVideo writes the test pattern to out with Debian's ffmpeg; nothing is fetched.
func genVideo(ctx context.Context, out string, seconds int) error {
	font := ""
	for _, f := range fonts {
		if _, err := os.Stat(f); err == nil {
			font = f
			break
		}
	}
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		return errors.New("ffmpeg not found: install it (Debian: apt-get install ffmpeg, or `make deps`)")
	}
	cmd := exec.CommandContext(ctx, ffmpeg, genVideoArgs(out, seconds, font)...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ffmpeg: %w: %s", err, strings.TrimSpace(string(msg)))
	}
	_, err = loadVideo(out)
	return err
}

func genVideoCommand(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("streamapp gen-video", flag.ContinueOnError)
	fs.SetOutput(stderr)
	seconds := fs.Int("seconds", 10, "length of the loop")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 || *seconds < 1 || *seconds > 600 {
		fmt.Fprintln(stderr, "usage: streamapp gen-video [-seconds N (1-600)] FILE.ivf")
		return 2
	}
	if err := genVideo(ctx, fs.Arg(0), *seconds); err != nil {
		fmt.Fprintf(stderr, "streamapp gen-video: %v\n", err)
		return 1
	}
	return 0
}
