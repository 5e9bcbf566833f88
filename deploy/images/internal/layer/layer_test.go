package layer

import (
	"archive/tar"
	"bytes"
	"io"
	"slices"
	"testing"
	"time"
)

func TestTarIsTheSameWhateverTheOrderOfAdds(t *testing.T) {
	entries := []Entry{
		{Path: "./usr/sbin/haproxy", Type: tar.TypeReg, Mode: 0o755, Data: []byte("elf")},
		{Path: "./usr/", Type: tar.TypeDir, Mode: 0o755},
		{Path: "/etc/passwd", Type: tar.TypeReg, Mode: 0o644, Data: []byte("root:x:0:0::/:/sbin/nologin\n")},
		{Path: "/usr/sbin/iptables", Type: tar.TypeSymlink, Linkname: "iptables-nft", Mode: 0o777},
		{Path: "/tmp", Type: tar.TypeDir, Mode: 0o1777},
	}
	build := func(order []Entry) []byte {
		tr := New()
		for _, e := range order {
			if err := tr.Add(e); err != nil {
				t.Fatal(err)
			}
		}
		b, err := tr.Tar(time.Unix(1700000000, 123))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := build(entries)
	reversed := slices.Clone(entries)
	slices.Reverse(reversed)
	if !bytes.Equal(a, build(reversed)) {
		t.Fatal("layer bytes depend on the order entries were added")
	}
	r := tar.NewReader(bytes.NewReader(a))
	var names []string
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(time.Unix(1700000000, 0)) || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: mtime %s, owner names %q %q", h.Name, h.ModTime, h.Uname, h.Gname)
		}
		names = append(names, h.Name)
	}
	want := []string{"etc/", "etc/passwd", "tmp/", "usr/", "usr/sbin/", "usr/sbin/haproxy", "usr/sbin/iptables"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
}

func TestAdd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []Entry
		check   func(*Tree) bool
		err     bool
	}{
		{name: "hard link becomes a copy", entries: []Entry{
			{Path: "./bin/a", Type: tar.TypeReg, Mode: 0o755, Data: []byte("x")},
			{Path: "./bin/b", Type: tar.TypeLink, Linkname: "./bin/a"},
		}, check: func(tr *Tree) bool {
			e, ok := tr.Get("/bin/b")
			return ok && e.Type == tar.TypeReg && string(e.Data) == "x" && e.Mode == 0o755
		}},
		{name: "hard link to nothing", entries: []Entry{{Path: "/b", Type: tar.TypeLink, Linkname: "/a"}}, err: true},
		{name: "later file wins", entries: []Entry{
			{Path: "/f", Type: tar.TypeReg, Data: []byte("1")}, {Path: "/f", Type: tar.TypeReg, Data: []byte("2")},
		}, check: func(tr *Tree) bool { e, _ := tr.Get("/f"); return string(e.Data) == "2" }},
		{name: "first directory wins", entries: []Entry{
			{Path: "/d", Type: tar.TypeDir, Mode: 0o700}, {Path: "/d/", Type: tar.TypeDir, Mode: 0o755},
		}, check: func(tr *Tree) bool { e, _ := tr.Get("/d"); return e.Mode == 0o700 }},
		{name: "file over directory", entries: []Entry{{Path: "/d/f", Type: tar.TypeReg}, {Path: "/d", Type: tar.TypeReg}}, err: true},
		{name: "file under file", entries: []Entry{{Path: "/f", Type: tar.TypeReg}, {Path: "/f/g", Type: tar.TypeReg}}, err: true},
		{name: "unclean path", entries: []Entry{{Path: "/a/../etc/shadow", Type: tar.TypeReg}}, err: true},
		{name: "device", entries: []Entry{{Path: "/dev/null", Type: tar.TypeChar}}, err: true},
		{name: "root entry ignored", entries: []Entry{{Path: "./", Type: tar.TypeDir, Mode: 0o700}}, check: func(tr *Tree) bool { return len(tr.Paths()) == 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := New()
			var err error
			for _, e := range tc.entries {
				if err = tr.Add(e); err != nil {
					break
				}
			}
			if (err != nil) != tc.err {
				t.Fatalf("error %v, want error %t", err, tc.err)
			}
			if tc.check != nil && !tc.check(tr) {
				t.Fatalf("tree %v", tr.Paths())
			}
		})
	}
}

func TestPrune(t *testing.T) {
	tr := New()
	for _, p := range []string{"/usr/share/doc/haproxy/README", "/usr/share/docs", "/usr/sbin/haproxy"} {
		if err := tr.Add(Entry{Path: p, Type: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
	}
	tr.Prune("/usr/share/doc")
	want := []string{"/usr", "/usr/sbin", "/usr/sbin/haproxy", "/usr/share", "/usr/share/docs"}
	if got := tr.Paths(); !slices.Equal(got, want) {
		t.Fatalf("after prune %v, want %v", got, want)
	}
}
