package debian

import (
	"errors"
	"reflect"
	"testing"
)

func TestParseDepends(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want [][]string
	}{
		{"", nil},
		{"libc6 (>= 2.34), libcrypt1 (>= 1:4.1.0), liblua5.3-0", [][]string{{"libc6"}, {"libcrypt1"}, {"liblua5.3-0"}}},
		{"debconf (>= 0.5) | debconf-2.0", [][]string{{"debconf", "debconf-2.0"}}},
		{"python3:any, libfoo [amd64] <!nocheck>", [][]string{{"python3"}, {"libfoo"}}},
		{" , libip4tc2 (= 1.8.9-2),", [][]string{{"libip4tc2"}}},
	} {
		if got := ParseDepends(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseDepends(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestClosure(t *testing.T) {
	installed := map[string]string{
		"haproxy":      "libc6, libssl3, adduser, libsystemd0 | libelogind0",
		"libc6":        "libgcc-s1",
		"libgcc-s1":    "libc6",
		"libssl3":      "libc6",
		"libsystemd0":  "libc6",
		"libelogind0":  "libc6",
		"ca-certs":     "openssl, debconf (>= 0.5) | debconf-2.0",
		"openssl":      "libssl3",
		"broken":       "libmissing",
		"alternatives": "missing | libssl3",
	}
	lookup := func(name string) (Package, bool, error) {
		deps, ok := installed[name]
		if name == "fails" {
			return Package{}, false, errors.New("dpkg-query failed")
		}
		return Package{Name: name, Version: "1", Depends: ParseDepends(deps)}, ok, nil
	}
	skip := map[string]bool{"adduser": true, "debconf": true}
	names := func(ps []Package) []string {
		var n []string
		for _, p := range ps {
			n = append(n, p.Name)
		}
		return n
	}
	for _, tc := range []struct {
		roots []string
		want  []string
		err   bool
	}{
		{roots: []string{"haproxy"}, want: []string{"haproxy", "libc6", "libgcc-s1", "libssl3", "libsystemd0"}},
		{roots: []string{"ca-certs"}, want: []string{"ca-certs", "libc6", "libgcc-s1", "libssl3", "openssl"}},
		{roots: []string{"alternatives"}, want: []string{"alternatives", "libc6", "libgcc-s1", "libssl3"}},
		{roots: []string{"broken"}, err: true},
		{roots: []string{"nothere"}, err: true},
		{roots: []string{"fails"}, err: true},
	} {
		got, err := Closure(tc.roots, skip, lookup)
		if (err != nil) != tc.err {
			t.Errorf("Closure(%v): error %v, want error %t", tc.roots, err, tc.err)
			continue
		}
		if !tc.err && !reflect.DeepEqual(names(got), tc.want) {
			t.Errorf("Closure(%v) = %v, want %v", tc.roots, names(got), tc.want)
		}
	}
}

func TestCABundle(t *testing.T) {
	files := map[string]string{
		CABundlePrefix + "A.crt":  "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----",
		CABundlePrefix + "B.crt":  "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n",
		CABundlePrefix + "README": "not a certificate",
		"/usr/share/doc/x/B.crt":  "elsewhere",
	}
	paths := []string{"/usr/share/doc/x/B.crt", CABundlePrefix + "A.crt", CABundlePrefix + "B.crt", CABundlePrefix + "README"}
	got, err := CABundle(paths, func(p string) []byte { return []byte(files[p]) })
	want := files[CABundlePrefix+"A.crt"] + "\n" + files[CABundlePrefix+"B.crt"]
	if err != nil || string(got) != want {
		t.Fatalf("CABundle = %q, %v; want %q", got, err, want)
	}
	if _, err := CABundle([]string{"/etc/x"}, func(string) []byte { return nil }); err == nil {
		t.Fatal("CABundle of no certificates: no error")
	}
}

func TestParseCandidate(t *testing.T) {
	for in, want := range map[string]string{
		"libcap2:\n  Installed: 1:2.66-4+deb12u2+b2\n  Candidate: 1:2.66-4+deb12u3+b1\n  Version table:\n": "1:2.66-4+deb12u3+b1",
		"foo:\n  Installed: (none)\n  Candidate: (none)\n":                                                 "",
		"": "",
	} {
		if got := ParseCandidate(in); got != want {
			t.Errorf("ParseCandidate(%q) = %q, want %q", in, got, want)
		}
	}
}
