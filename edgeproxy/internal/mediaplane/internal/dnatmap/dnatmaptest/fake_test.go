package dnatmaptest_test

import (
	"context"
	"errors"
	"io/fs"
	"maps"
	"net/netip"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap/dnatmaptest"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

// kernel is the method set the fake stands in for.
type kernel interface {
	Read(context.Context, dnatmap.Layout) (dnatmap.State, error)
	Ensure(context.Context, dnatmap.Layout) (map[uint16]netip.AddrPort, error)
	Apply(context.Context, dnatmap.Change) error
	Remove(context.Context) error
	Close() error
}

var (
	_ kernel = (*dnatmap.Kernel)(nil)
	_ kernel = (*dnatmaptest.Fake)(nil)
)

var layout = dnatmap.Layout{Public: netip.MustParseAddr("198.18.1.1"), Ports: portalloc.Range{First: 10500, Last: 20000}}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

type elems = map[uint16]netip.AddrPort

func TestFakeApply(t *testing.T) {
	start := elems{10500: ap("198.19.2.2:1"), 10501: ap("198.19.2.2:2")}
	for _, tc := range []struct {
		name   string
		change dnatmap.Change
		want   elems
		err    error // nil: committed
	}{
		{"empty", dnatmap.Change{}, start, nil},
		{"add", dnatmap.Change{Set: elems{10502: ap("198.19.2.3:3")}}, elems{10500: ap("198.19.2.2:1"), 10501: ap("198.19.2.2:2"), 10502: ap("198.19.2.3:3")}, nil},
		{"repoint", dnatmap.Change{Delete: []uint16{10500}, Set: elems{10500: ap("198.19.2.3:9")}}, elems{10500: ap("198.19.2.3:9"), 10501: ap("198.19.2.2:2")}, nil},
		{"delete", dnatmap.Change{Delete: []uint16{10500, 10501}}, elems{}, nil},
		{"mapped IPv4 backend", dnatmap.Change{Set: elems{10502: ap("[::ffff:198.19.2.3]:3")}}, elems{10500: ap("198.19.2.2:1"), 10501: ap("198.19.2.2:2"), 10502: ap("198.19.2.3:3")}, nil},
		{"delete absent", dnatmap.Change{Delete: []uint16{10500, 10999}, Set: elems{10502: ap("198.19.2.3:3")}}, start, fs.ErrNotExist},
		{"delete twice", dnatmap.Change{Delete: []uint16{10500, 10500}}, start, fs.ErrNotExist},
		{"set present", dnatmap.Change{Delete: []uint16{10500}, Set: elems{10500: ap("198.19.2.3:9"), 10501: ap("198.19.2.2:2")}}, start, fs.ErrExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f dnatmaptest.Fake
			ctx := context.Background()
			if _, err := f.Ensure(ctx, layout); err != nil {
				t.Fatal(err)
			}
			if err := f.Apply(ctx, dnatmap.Change{Set: start}); err != nil {
				t.Fatal(err)
			}
			err := f.Apply(ctx, tc.change)
			if tc.err == nil && err != nil || tc.err != nil && !errors.Is(err, tc.err) {
				t.Fatalf("Apply error %v, want %v", err, tc.err)
			}
			if got := f.Elements(); !maps.Equal(got, tc.want) {
				t.Fatalf("elements %v, want %v", got, tc.want)
			}
			want := dnatmaptest.Calls{Ensures: 1, Applies: 2, Sets: len(start)}
			switch {
			case tc.change.Len() == 0:
				want.Applies = 1
			case tc.err != nil:
				want.Refused = 1
			default:
				want.Deletes, want.Sets = want.Deletes+len(tc.change.Delete), want.Sets+len(tc.change.Set)
			}
			if got := f.Calls(); got != want {
				t.Fatalf("calls %+v, want %+v", got, want)
			}
		})
	}
}

func TestFakeEnsureAndRead(t *testing.T) {
	var f dnatmaptest.Fake
	ctx := context.Background()
	st, err := f.Read(ctx, layout)
	if err != nil || st.Current || st.Elements == nil || len(st.Elements) != 0 {
		t.Fatalf("Read of no table = %+v, %v; want not current, an empty map", st, err)
	}
	if err := f.Apply(ctx, dnatmap.Change{Set: elems{10500: ap("198.19.2.2:1")}}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Apply without a table: %v, want ErrNotExist", err)
	}
	if _, err := f.Ensure(ctx, layout); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Ensure(ctx, layout); err != nil {
		t.Fatal(err)
	}
	if got := f.Calls().Ensures; got != 1 {
		t.Fatalf("Ensure transactions %d, want 1: the second found the layout current", got)
	}
	f.SetElement(10500, ap("198.19.2.2:1"))
	other := layout
	other.Public = netip.MustParseAddr("198.18.7.7")
	if st, err := f.Read(ctx, other); err != nil || st.Current {
		t.Fatalf("Read of another layout = %+v, %v", st, err)
	}
	got, err := f.Ensure(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if want := (elems{10500: ap("198.19.2.2:1")}); !maps.Equal(got, want) {
		t.Fatalf("Ensure of another layout returned %v, want the kept %v", got, want)
	}
	got[1] = ap("198.19.2.2:9")
	if st, err := f.Read(ctx, other); err != nil || !st.Current || len(st.Elements) != 1 {
		t.Fatalf("Read = %+v, %v; want current with one element (not the caller's copy)", st, err)
	}
	if _, err := f.Ensure(ctx, dnatmap.Layout{Public: netip.MustParseAddr("2001:db8::1"), Ports: layout.Ports}); err == nil {
		t.Fatal("Ensure of an IPv6 public address succeeded")
	}
}

func TestFakeHooks(t *testing.T) {
	var f dnatmaptest.Fake
	ctx := context.Background()
	if _, err := f.Ensure(ctx, layout); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	calls := []struct {
		name string
		call func() error
	}{
		{"Read", func() error { _, err := f.Read(ctx, layout); return err }},
		{"Ensure", func() error { _, err := f.Ensure(ctx, layout); return err }},
		{"Apply", func() error { return f.Apply(ctx, dnatmap.Change{Set: elems{10500: ap("198.19.2.2:1")}}) }},
		{"Remove", func() error { return f.Remove(ctx) }},
	}
	for _, c := range calls {
		f.FailNext(boom)
		before, calls := f.Elements(), f.Calls()
		if err := c.call(); !errors.Is(err, boom) {
			t.Fatalf("%s after FailNext: %v, want boom", c.name, err)
		}
		if !maps.Equal(f.Elements(), before) || f.Calls() != calls {
			t.Fatalf("%s after FailNext changed the state", c.name)
		}
		if st, err := f.Read(ctx, layout); err != nil || !st.Current {
			t.Fatalf("%s after FailNext: then Read = %+v, %v; want the table kept, the failure spent", c.name, st, err)
		}
	}

	f.SetElement(10500, ap("198.19.2.2:1"))
	f.SetElement(10501, ap("198.19.2.2:2"))
	f.DeleteElement(10501)
	if got, want := f.Elements(), (elems{10500: ap("198.19.2.2:1")}); !maps.Equal(got, want) {
		t.Fatalf("elements after drift %v, want %v", got, want)
	}
	f.Drop()
	if st, err := f.Read(ctx, layout); err != nil || st.Current || len(st.Elements) != 0 {
		t.Fatalf("Read after Drop = %+v, %v", st, err)
	}
	f.SetElement(10500, ap("198.19.2.2:1"))
	if got := f.Elements(); len(got) != 0 {
		t.Fatalf("SetElement without a table added %v", got)
	}
	if got, err := f.Ensure(ctx, layout); err != nil || len(got) != 0 {
		t.Fatalf("Ensure after Drop = %v, %v; want a new empty map", got, err)
	}
	if err := f.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.Remove(ctx); err != nil {
		t.Fatalf("Remove of no table: %v", err)
	}
	if got := f.Calls().Removes; got != 1 {
		t.Fatalf("Removes %d, want 1", got)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.Ensure(cancelled, layout); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ensure with a cancelled context: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Read(ctx, layout); err == nil {
		t.Fatal("Read after Close succeeded")
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Close never fails, as the kernel's does not.
	f.FailNext(boom)
	if err := f.Close(); err != nil {
		t.Fatalf("Close after FailNext: %v", err)
	}
}
