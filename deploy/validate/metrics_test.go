package validate

import (
	"bufio"
	"encoding/json"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

var (
	docRow     = regexp.MustCompile("^\\| `([a-z_:][a-z0-9_:]*)` \\|")
	codeMetric = regexp.MustCompile(`Name:\s*"(livegate_[a-z0-9_]+)"`)
	promParser = parser.NewParser(parser.Options{})
)

// documented reads docs/metrics.md: the metrics under its "Exported" headings.
func documented(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exported := map[string]bool{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if h, ok := strings.CutPrefix(line, "## "); ok {
			in = strings.HasPrefix(h, "Exported")
			continue
		}
		if m := docRow.FindStringSubmatch(line); m != nil && in {
			if exported[m[1]] {
				t.Errorf("docs/metrics.md lists %s twice", m[1])
			}
			exported[m[1]] = true
		}
	}
	if len(exported) == 0 {
		t.Fatal("docs/metrics.md: no exported metrics found")
	}
	return exported
}

// inCode finds the metric names the binaries register.
func inCode(t *testing.T) map[string]string {
	t.Helper()
	found := map[string]string{}
	for _, dir := range []string{"agent", "edgeproxy", "pkg"} {
		root := filepath.Join(repoRoot, dir)
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range codeMetric.FindAllStringSubmatch(string(b), -1) {
				found[m[1]] = path
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return found
}

func TestMetricsDocMatchesTheCode(t *testing.T) {
	exported := documented(t)
	code := inCode(t)
	for name, file := range code {
		if !exported[name] {
			t.Errorf("%s (%s) is not in docs/metrics.md", name, file)
		}
	}
	for name := range exported {
		if _, ok := code[name]; !ok {
			t.Errorf("docs/metrics.md lists %s as exported but no binary registers it", name)
		}
	}
}

// metricNames lists the metrics a PromQL expression selects.
func metricNames(expr string) ([]string, error) {
	e, err := promParser.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names, nil
}

// known says whether a selected series exists: a documented metric (a histogram's _bucket, _sum
// and _count included), a standard Go or process collector series, or up.
func known(name string, metrics map[string]bool) bool {
	if metrics[name] || name == "up" || strings.HasPrefix(name, "process_") || strings.HasPrefix(name, "go_") {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && metrics[base] {
			return true
		}
	}
	return false
}

func checkRules(t *testing.T, file string, allowed map[string]bool) []string {
	t.Helper()
	groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("%v", err)
	}
	if groups == nil {
		return nil
	}
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			names, err := metricNames(r.Expr)
			if err != nil {
				t.Errorf("%s: %s: %v", file, r.Alert, err)
			}
			for _, n := range names {
				if !known(n, allowed) {
					t.Errorf("%s: %s uses %s, which docs/metrics.md does not list", file, r.Alert, n)
				}
			}
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[k] == "" {
					t.Errorf("%s: %s has no %s annotation", file, r.Alert, k)
				}
			}
			if r.Labels["severity"] == "" {
				t.Errorf("%s: %s has no severity label", file, r.Alert)
			}
			anchor := "#" + strings.ToLower(r.Alert)
			if !strings.HasSuffix(r.Annotations["runbook_url"], anchor) {
				t.Errorf("%s: %s: runbook_url should end in %s", file, r.Alert, anchor)
			}
		}
	}
	return alerts
}

func TestAlertRules(t *testing.T) {
	exported := documented(t)
	rules := filepath.Join(repoRoot, "deploy", "prometheus")
	alerts := checkRules(t, filepath.Join(rules, "livegate-alerts.yaml"), exported)

	// Every alert has its section in the runbook.
	runbook, err := os.ReadFile(filepath.Join(repoRoot, "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if !strings.Contains(string(runbook), "\n### "+a+"\n") {
			t.Errorf("docs/runbook.md has no \"### %s\" section", a)
		}
	}
}

// TestAlertRulesRejectMistakes guards the rule check itself.
func TestAlertRulesRejectMistakes(t *testing.T) {
	bad := "groups:\n- name: x\n  rules:\n  - alert: X\n    expr: rate(foo[5m] > 1\n"
	if _, errs := rulefmt.Parse([]byte(bad), false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler)); len(errs) == 0 {
		t.Error("a broken expression was accepted")
	}
	exported := documented(t)
	if names, _ := metricNames(`livegate_edge_ports_free < 10`); len(names) != 1 || known(names[0], exported) {
		t.Errorf("an unknown metric was accepted: %v", names)
	}
}

// dashboard is the part of a Grafana dashboard the checks read.
type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Schema     int    `json:"schemaVersion"`
	Panels     []any  `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// queries collects the PromQL of every panel (rows' nested panels included) and of every
// label_values variable, and reports reused panel ids.
func (d dashboard) queries(t *testing.T) []string {
	t.Helper()
	var exprs []string
	ids := map[float64]bool{}
	var walk func(panels []any)
	walk = func(panels []any) {
		for _, p := range panels {
			panel, _ := p.(obj)
			id, _ := panel["id"].(float64)
			if ids[id] {
				t.Errorf("panel id %v used twice", id)
			}
			ids[id] = true
			targets, _ := panel["targets"].([]any)
			for _, tg := range targets {
				if e, _ := at(tg, "expr").(string); e != "" {
					exprs = append(exprs, e)
				}
			}
			if nested, ok := panel["panels"].([]any); ok {
				walk(nested)
			}
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if q, _ := at(v.Query, "query").(string); strings.HasPrefix(q, "label_values(") {
			selector, _, _ := strings.Cut(strings.TrimPrefix(q, "label_values("), ", ")
			exprs = append(exprs, selector)
		}
	}
	return exprs
}

// grafanaVars are Grafana's built-in interval variables, replaced by durations so the PromQL
// parses; the dashboard's own variables stand in for label values and become "x".
var (
	grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")
	templateVar = regexp.MustCompile(`\$\{?(\w+)\}?`)
)

func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "grafana", "livegate.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash dashboard
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("livegate.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || dash.Schema == 0 || len(dash.Panels) == 0 {
		t.Fatalf("livegate.json: want uid, title, schemaVersion and panels")
	}
	hasDatasource := false
	for _, v := range dash.Templating.List {
		hasDatasource = hasDatasource || v.Name == "datasource"
	}
	if !hasDatasource {
		t.Error("livegate.json: want a datasource variable so the dashboard imports anywhere")
	}
	exprs := dash.queries(t)
	if len(exprs) == 0 {
		t.Fatal("livegate.json: no queries")
	}
	exported := documented(t)
	used := map[string]bool{}
	for _, e := range exprs {
		names, err := metricNames(templateVar.ReplaceAllString(grafanaVars.Replace(e), "x"))
		if err != nil {
			t.Errorf("livegate.json: %q: %v", e, err)
		}
		for _, n := range names {
			used[n] = true
			if !known(n, exported) {
				t.Errorf("livegate.json: %q uses %s, which docs/metrics.md does not list as exported", e, n)
			}
		}
	}
	var unused []string
	for n := range exported {
		if !used[n] && !used[n+"_bucket"] {
			unused = append(unused, n)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Logf("exported metrics not on the dashboard: %s", strings.Join(unused, ", "))
	}
}
