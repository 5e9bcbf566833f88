// Package assemble makes livegate's images: what each one holds (its Spec) and how that becomes
// an image of the go-containerregistry model, layer by layer.
package assemble

// Spec is one image: its programs and how it runs.
type Spec struct {
	// Name is the image's name in `make images` and its archive's ("livegate-agent").
	Name string
	// Repo is the repository the archive tags, as deploy/kubernetes refers to it.
	Repo        string
	Description string
	// Binary is where the livegate binary goes in the image; it is the entrypoint.
	Binary string
	// User is the numeric user:group the entrypoint runs as.
	User  string
	Ports []string
	// Packages are the Debian packages the image runs besides the binary; their dependencies
	// come along (Closure), except those of SkipPackages.
	Packages []string
	// Symlinks are made after unpacking, as the packages' maintainer scripts would have
	// (update-alternatives, the /bin/sh diversion), from link path to target.
	Symlinks map[string]string
	// Dirs are empty directories the image has, with their modes.
	Dirs map[string]int64
}

// SkipPackages are what maintainer scripts and package management alone use: dependencies of
// the packages, but nothing the programs in an image run.
var SkipPackages = map[string]bool{
	"adduser": true, "debconf": true, "debconf-2.0": true, "debianutils": true, "dpkg": true,
	"init-system-helpers": true, "lsb-base": true, "sysvinit-utils": true, "passwd": true,
}

// PrunePaths are left out of the packages' files: documentation, debugger scripts, the service
// definitions of a host (an image runs the program directly).
var PrunePaths = []string{
	"/usr/share/doc", "/usr/share/doc-base", "/usr/share/man", "/usr/share/info", "/usr/share/lintian",
	"/usr/share/bug", "/etc/init.d", "/lib/systemd", "/usr/lib/systemd", "/etc/logrotate.d", "/etc/rsyslog.d",
	"/usr/share/vim", "/usr/share/gdb", "/usr/share/gcc", "/usr/share/menu",
	// glibc's iconv modules: nothing in the images converts character sets.
	"/usr/lib/x86_64-linux-gnu/gconv", "/usr/lib/aarch64-linux-gnu/gconv",
}

// Agent is livegate-agent's image: the static binary, a user, CA certificates.
var Agent = Spec{
	Name:        "livegate-agent",
	Repo:        "livegate/livegate-agent",
	Description: "livegate-agent: the session REST API and lifecycle sidecar beside a streaming app",
	Binary:      "/usr/local/bin/livegate-agent",
	User:        "65532:65532",
	Ports:       []string{"8011/tcp"},
}

// Edge is livegate-edgeproxy's image: the binary, and the HAProxy, iptables (nf_tables
// backend, as Debian's default alternative) and conntrack it runs, with their libraries; dash
// for the pod's init step that creates the session map file. Root: iptables needs CAP_NET_ADMIN,
// which Kubernetes grants to uid 0 only.
var Edge = Spec{
	Name:        "livegate-edgeproxy",
	Repo:        "livegate/livegate-edgeproxy",
	Description: "livegate-edgeproxy: routes websocket signaling through HAProxy and media UDP through the kernel",
	Binary:      "/usr/local/bin/livegate-edgeproxy",
	User:        "0:0",
	Ports:       []string{"48322/tcp", "9470/tcp"},
	Packages:    []string{"haproxy", "iptables", "conntrack", "dash"},
	Symlinks: map[string]string{
		"/bin/sh":                     "dash",
		"/usr/sbin/iptables":          "iptables-nft",
		"/usr/sbin/iptables-save":     "iptables-nft-save",
		"/usr/sbin/iptables-restore":  "iptables-nft-restore",
		"/usr/sbin/ip6tables":         "ip6tables-nft",
		"/usr/sbin/ip6tables-save":    "ip6tables-nft-save",
		"/usr/sbin/ip6tables-restore": "ip6tables-nft-restore",
		"/var/run":                    "/run",
	},
	Dirs: map[string]int64{"/run": 0o755, "/var/lib/livegate": 0o700},
}

// Specs are the images `make images` builds, by name.
var Specs = map[string]Spec{Agent.Name: Agent, Edge.Name: Edge}
