package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// The observability and deployment kit in deploy/ is checked here against
// the real binary, so that renaming a metric or a label, or a config key,
// breaks CI instead of a dashboard or an alert in the field. The tools that
// are not Go (promtool, systemd-analyze) run in deploy/check.sh.

const deployDir = "../deploy"

// TestDeployMetricNames starts a sidecar with every kind of client (drivers,
// a cursor subscriber, commands ending in each final stage, the NATS uplink),
// scrapes /metrics, and checks every metric name, label name and label value
// that the alert rules, the dashboard and the README's metric table use.
func TestDeployMetricNames(t *testing.T) {
	refs := deployRefs(t)
	js := startJetStream(t)
	addr := freeAddr(t)
	b := newBus(t, "--metrics-addr", addr, "--wal-max-bytes", "64MiB",
		"--uplink-nats-servers", js.ClientURL(), "--uplink-nats-create-stream", "--uplink-nats-gateway", "deploy")
	sc := b.startSidecar()
	b.serveDriver(sc, "deploy-ok", "plc-ok")
	b.serveDriver(sc, "deploy-fail", "plc-fail", "--command-reply", "failed")
	b.serveDriver(sc, "deploy-mute", "plc-mute", "--command-reply", "none")
	start(t, "tail", "--name", b.name, "--run-dir", b.runDir, "--from", "cursor:deploy", "--follow")
	for _, c := range []struct{ target, stage string }{
		{"plc-ok", "COMPLETED"}, {"plc-fail", "FAILED"}, {"plc-mute", "EXPIRED"}, {"plc-nobody", "REJECTED"},
	} {
		p := b.cmd("--target", c.target, "--device", "d1", "--set", "sp=1", "--timeout", "500ms")
		p.wait(t, 30*time.Second)
		if !strings.Contains(p.out.String(), c.stage) {
			t.Fatalf("framebus cmd --target %s: want stage %s, got:\n%s", c.target, c.stage, p.out.String())
		}
	}

	// The uplink and the subscriber report asynchronously: scrape until every
	// reference resolves, then report what does not.
	var sc1 deployScrape
	var problems []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		sc1 = scrapeFamilies(t, addr)
		problems = refs.check(sc1)
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(problems) > 0 {
		t.Fatalf("deploy/ uses names the sidecar does not export (%d problems):\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
	t.Logf("%d metric names and %d selectors of deploy/ resolved against /metrics", len(refs.names()), len(refs.selectors))

	// Every framebus_* family the sidecar exports is in deploy/README.md's
	// metric reference.
	readme := readDeploy(t, "README.md")
	for name := range sc1.families {
		if strings.HasPrefix(name, "framebus_") && !strings.Contains(readme, "`"+name+"`") {
			t.Errorf("deploy/README.md does not document metric %s", name)
		}
	}
	// The values of the configuration series the rules divide by.
	for name, want := range map[string]float64{"framebus_wal_max_bytes": 64 << 20, "framebus_wal_cursor_max_bytes": 128 << 20} {
		if got := sc1.value(name); got != want {
			t.Errorf("%s = %v, want %v (the configured value)", name, got, want)
		}
	}
}

// TestDeployRetentionMetrics drives the WAL past wal_max_bytes with a
// durable cursor that does not ack, and checks the series the retention
// alerts and panels read: with cursor_policy retain the cursor holds
// retention (FramebusRetentionHeld), with drop retention deletes and the
// cursor loses frames (FramebusCursorLosingFrames).
func TestDeployRetentionMetrics(t *testing.T) {
	for _, policy := range []string{"retain", "drop"} {
		t.Run(policy, func(t *testing.T) {
			addr := freeAddr(t)
			b := newBus(t, "--metrics-addr", addr, "--wal-max-bytes", "1MiB", "--cursor-max-bytes", "256MiB",
				"--cursor-policy", policy, "--wal-compression", "none")
			b.startSidecar()
			// The cursor acks the first frame and then nothing.
			if err := b.publish("first", 1).wait(t, time.Minute); err != nil {
				t.Fatalf("framebus publish: %v", err)
			}
			if err := start(t, "tail", "--name", b.name, "--run-dir", b.runDir, "--from", "cursor:held", "--limit", "1").wait(t, time.Minute); err != nil {
				t.Fatalf("framebus tail --from cursor:held: %v", err)
			}
			if err := b.publish("bulk", 100000).wait(t, 2*time.Minute); err != nil {
				t.Fatalf("framebus publish: %v", err)
			}
			var sc deployScrape
			waitFor(t, 30*time.Second, "retention to act on a WAL of 100000 frames", func() bool {
				sc = scrapeFamilies(t, addr)
				return sc.value("framebus_wal_retention_held") == 1 || sc.value("framebus_wal_retention_deleted_frames_total") > 0
			})
			footprint, maxBytes := sc.value("framebus_wal_footprint_bytes"), sc.value("framebus_wal_max_bytes")
			switch policy {
			case "retain":
				if held := sc.value("framebus_wal_retention_held"); held != 1 || footprint <= maxBytes {
					t.Errorf("retain: framebus_wal_retention_held = %v, footprint %v, max %v: want held with the footprint above the max", held, footprint, maxBytes)
				}
				if got := sc.value("framebus_wal_cursor_max_bytes"); got != 256<<20 {
					t.Errorf("retain: framebus_wal_cursor_max_bytes = %v, want %v", got, 256<<20)
				}
			case "drop":
				lost := 0.0
				for _, m := range sc.families["framebus_cursor_lost_total"].GetMetric() {
					lost += m.GetCounter().GetValue()
				}
				if deleted := sc.value("framebus_wal_retention_deleted_frames_total"); deleted <= 0 || lost <= 0 || footprint > maxBytes {
					t.Errorf("drop: deleted %v frames, cursor lost %v, footprint %v of max %v: want deletions, losses and the footprint under the max", deleted, lost, footprint, maxBytes)
				}
				if sc.families["framebus_wal_cursor_max_bytes"] != nil {
					t.Error("drop: framebus_wal_cursor_max_bytes is exported, but cursor_max_bytes has no effect with cursor_policy drop")
				}
			}
		})
	}
}

// TestDeployRefCheck checks the checker: names, labels and values that do
// not exist are reported.
func TestDeployRefCheck(t *testing.T) {
	sc := deployScrape{families: map[string]*dto.MetricFamily{}, samples: map[string]map[string]map[string]bool{
		"framebus_paused":                  {},
		"framebus_frames_dropped_total":    {"producer": {"a": true}, "slot": {"0": true}, "reason": {"ring_full": true, "paused": true}},
		"framebus_commands_finished_total": {"stage": {"COMPLETED": true}},
	}}
	r := newRefs([]string{"job", "instance"})
	for _, e := range []string{
		`framebus_paused{instance=~"$instance"} == 1`,
		`framebus_no_such_metric > 0`,
		`sum by (producer, color) (rate(framebus_frames_dropped_total{reason="full"}[5m]))`,
		`framebus_paused{producer="a"}`,
		`increase(framebus_commands_finished_total{stage=~"COMPLETED|FINISHED"}[5m])`,
		`level:framebus_paused:sum`,
	} {
		if err := r.addExpr("test", e); err != nil {
			t.Fatal(err)
		}
	}
	got := strings.Join(r.check(sc), "\n")
	for _, want := range []string{
		"framebus_no_such_metric",                 // unknown metric
		`label "color"`,                           // unknown grouping label
		`reason="full"`,                           // unknown value
		`framebus_paused has no label "producer"`, // label of another metric
		`stage value "FINISHED"`,                  // unknown alternative
		"level:framebus_paused:sum",               // recording rule not defined
	} {
		if !strings.Contains(got, want) {
			t.Errorf("check did not report %s; it reported:\n%s", want, got)
		}
	}
	if strings.Contains(got, "$instance") || strings.Contains(got, `"ring_full"`) {
		t.Errorf("check reported a valid reference:\n%s", got)
	}
}

// TestDeployRules checks what promtool does not: every alert has `for`, a
// severity, a summary, a description and a runbook section in
// deploy/README.md, and a unit test in which it fires.
func TestDeployRules(t *testing.T) {
	rules := loadRules(t)
	readme := readDeploy(t, "README.md")
	var tests struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	unmarshalYAML(t, "prometheus/framebus-rules.test.yml", &tests)
	if !slices.Equal(tests.RuleFiles, []string{"framebus-rules.yml"}) {
		t.Errorf("framebus-rules.test.yml tests %v, want [framebus-rules.yml]", tests.RuleFiles)
	}
	fires := map[string]bool{}
	silent := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if r.For == "" {
				t.Errorf("alert %s has no for:", r.Alert)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, s)
			}
			for _, k := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[k]) == "" {
					t.Errorf("alert %s has no %s annotation", r.Alert, k)
				}
			}
			anchor := strings.ToLower(r.Alert)
			if r.Annotations["runbook"] != "deploy/README.md#"+anchor {
				t.Errorf("alert %s: runbook %q, want deploy/README.md#%s", r.Alert, r.Annotations["runbook"], anchor)
			}
			if !regexp.MustCompile(`(?m)^### ` + r.Alert + `$`).MatchString(readme) {
				t.Errorf("deploy/README.md has no section \"### %s\" (the alert's runbook)", r.Alert)
			}
			if !fires[r.Alert] || !silent[r.Alert] {
				t.Errorf("alert %s: framebus-rules.test.yml must test it firing (%v) and silent (%v)", r.Alert, fires[r.Alert], silent[r.Alert])
			}
		}
	}
	if alerts < 20 {
		t.Errorf("found %d alerts in framebus-rules.yml; is the file read right?", alerts)
	}
}

// TestDeployDashboard checks the dashboard's structure: a datasource
// variable that every panel and query uses, unique ids, panels that fit the
// 24-column grid without overlapping, defined template variables, and (with
// promtool) PromQL that parses.
func TestDeployDashboard(t *testing.T) {
	var d struct {
		UID           string `json:"uid"`
		Title         string `json:"title"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
			GridPos struct{ X, Y, W, H int } `json:"gridPos"`
			Targets []struct {
				Datasource *struct {
					UID string `json:"uid"`
				} `json:"datasource"`
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	raw := readDeploy(t, "grafana/framebus-dashboard.json")
	dec := json.NewDecoder(strings.NewReader(raw))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana/framebus-dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("dashboard uid %q, title %q, schemaVersion %d: want both set and a schema of Grafana 9.3 or later", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	dsVar := false
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = true
		}
	}
	if !dsVar {
		t.Error("dashboard has no datasource variable of type prometheus named datasource")
	}
	ids := map[int]string{}
	type rect struct {
		x, y, w, h int
		title      string
	}
	var rects []rect
	queries := 0
	varRef := regexp.MustCompile(`\$\{?(\w+)`)
	for _, p := range d.Panels {
		if prev, ok := ids[p.ID]; ok {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is outside the 24-column grid", p.Title, g)
		}
		for _, r := range rects {
			if g.X < r.x+r.w && r.x < g.X+g.W && g.Y < r.y+r.h && r.y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap", r.title, p.Title)
			}
		}
		rects = append(rects, rect{g.X, g.Y, g.W, g.H, p.Title})
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refIDs := map[string]bool{}
		for _, q := range p.Targets {
			queries++
			if q.Datasource == nil || q.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q, query %s does not use the datasource variable", p.Title, q.RefID)
			}
			if q.Expr == "" || refIDs[q.RefID] {
				t.Errorf("panel %q: query %q has no expression or a duplicate refId", p.Title, q.RefID)
			}
			refIDs[q.RefID] = true
			for _, m := range varRef.FindAllStringSubmatch(q.Expr, -1) {
				if !vars[m[1]] {
					t.Errorf("panel %q uses $%s, which is no template variable", p.Title, m[1])
				}
			}
		}
	}
	if queries < 40 {
		t.Errorf("found %d queries in the dashboard; is the file read right?", queries)
	}

	// PromQL syntax: the dashboard's expressions, variables replaced, as
	// recording rules for `promtool check rules`.
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not found (apt-get install prometheus): CI must check the dashboard's PromQL")
		}
		t.Skip("promtool not found (apt-get install prometheus): the dashboard's PromQL syntax is not checked")
	}
	r := newRefs(nil)
	r.collectDashboard(t, raw)
	var buf strings.Builder
	buf.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	subst := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h", "$instance", ".+", "$bus", ".*")
	for i, e := range r.exprs {
		if strings.HasPrefix(e.expr, "label_values(") {
			continue
		}
		q, _ := json.Marshal(subst.Replace(e.expr))
		fmt.Fprintf(&buf, "      - record: dashboard:query%d\n        expr: %s\n", i, q)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(file, []byte(buf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		var names strings.Builder
		for i, e := range r.exprs {
			fmt.Fprintf(&names, "  dashboard:query%d is %s: %s\n", i, e.where, e.expr)
		}
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s\n%s", err, out, names.String())
	}
}

// TestDeployConfig checks that deploy/framebus.toml is a valid configuration
// for `framebus run`, as it is and with every commented-out key enabled.
func TestDeployConfig(t *testing.T) {
	text := readDeploy(t, "framebus.toml")
	commented := regexp.MustCompile(`(?m)^# ([a-z_.]+ = .*)$`)
	if len(commented.FindAllString(text, -1)) < 10 {
		t.Fatalf("deploy/framebus.toml: expected commented-out example keys")
	}
	// The example group may not exist here: the sidecar's primary gid does.
	all := commented.ReplaceAllString(text, "$1")
	all = regexp.MustCompile(`(?m)^group = .*$`).ReplaceAllString(all, fmt.Sprintf("group = %q", strconv.Itoa(os.Getgid())))
	for _, c := range []struct{ name, text string }{{"as shipped", text}, {"every key enabled", all}} {
		file := filepath.Join(t.TempDir(), "framebus.toml")
		if err := os.WriteFile(file, []byte(c.text), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binary, "run", "--config", file, "--print-config")
		cmd.Env = append(os.Environ(), "FRAMEBUS_CONFIG=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("framebus run --config deploy/framebus.toml (%s) --print-config: %v\n%s", c.name, err, out)
		}
		for _, key := range []string{`name = "default"`, `metrics_addr = "127.0.0.1:9464"`, `wal_max_bytes = "8GiB"`} {
			if !strings.Contains(string(out), key) {
				t.Errorf("%s: the effective configuration lacks %s:\n%s", c.name, key, out)
			}
		}
	}
}

// --- references: what deploy/ uses -------------------------------------------

// promSelector is a metric name (or "" for a bare {…}) with its label matchers,
// as written in one expression.
type promSelector struct {
	where    string
	name     string
	matchers []promMatcher
}

type promMatcher struct{ label, op, value string }

type exprRef struct{ where, expr string }

// deployRefSet collects the PromQL of the rules and the dashboard.
type deployRefSet struct {
	targetLabels []string            // labels the scrape adds: job, instance, the config's
	recorded     map[string]bool     // names of recording rules
	selectors    []promSelector      // every metric promSelector
	grouping     map[string][]string // expression → labels of by/without/on/ignoring
	groupNames   map[string][]string // expression → metric names in it
	mentioned    map[string][]string // framebus_* names in annotations and descriptions → where
	exprs        []exprRef
}

func newRefs(targetLabels []string) *deployRefSet {
	return &deployRefSet{targetLabels: targetLabels, recorded: map[string]bool{}, grouping: map[string][]string{},
		groupNames: map[string][]string{}, mentioned: map[string][]string{}}
}

func (r *deployRefSet) names() map[string]bool {
	n := map[string]bool{}
	for _, s := range r.selectors {
		n[s.name] = true
	}
	return n
}

var mentionedName = regexp.MustCompile(`[a-z_:]*framebus_[a-z0-9_:]*[a-z0-9]`)

// deployRefs reads the rules, the dashboard and the scrape configuration.
func deployRefs(t testing.TB) *deployRefSet {
	t.Helper()
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
		RuleFiles []string `yaml:"rule_files"`
	}
	unmarshalYAML(t, "prometheus/prometheus.yml", &prom)
	target := []string{"job", "instance"}
	job := false
	for _, sc := range prom.ScrapeConfigs {
		job = job || sc.JobName == "framebus"
		for _, st := range sc.StaticConfigs {
			for k := range st.Labels {
				target = append(target, k)
			}
		}
	}
	if !job || !slices.Contains(prom.RuleFiles, "framebus-rules.yml") {
		t.Fatalf("deploy/prometheus/prometheus.yml: want a scrape job named framebus and rule_files framebus-rules.yml (the rules select job=\"framebus\")")
	}
	r := newRefs(target)
	rules := loadRules(t)
	for _, g := range rules.Groups {
		for _, rule := range g.Rules {
			if rule.Record != "" {
				r.recorded[rule.Record] = true
			}
		}
	}
	for _, g := range rules.Groups {
		for _, rule := range g.Rules {
			where := "framebus-rules.yml " + rule.Record + rule.Alert
			if err := r.addExpr(where, rule.Expr); err != nil {
				t.Fatal(err)
			}
			for _, a := range rule.Annotations {
				for _, n := range mentionedName.FindAllString(a, -1) {
					r.mentioned[n] = append(r.mentioned[n], where)
				}
			}
		}
	}
	r.collectDashboard(t, readDeploy(t, "grafana/framebus-dashboard.json"))
	if len(r.selectors) < 80 {
		t.Fatalf("found only %d metric selectors in deploy/: is the parser right?", len(r.selectors))
	}
	return r
}

// collectDashboard adds every "expr" of the dashboard (panel queries and
// annotations), the templating queries, and the names panel descriptions
// mention.
func (r *deployRefSet) collectDashboard(t testing.TB, raw string) {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		t.Fatalf("grafana/framebus-dashboard.json: %v", err)
	}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			where := path
			if title, ok := v["title"].(string); ok {
				where = "dashboard " + strconv.Quote(title)
			} else if name, ok := v["name"].(string); ok {
				where = "dashboard variable " + name
			}
			for k, c := range v {
				s, isString := c.(string)
				switch {
				case k == "expr" && isString:
					r.exprs = append(r.exprs, exprRef{where, s})
					if err := r.addExpr(where, s); err != nil {
						t.Error(err)
					}
				case k == "query" && isString && strings.HasPrefix(s, "label_values("), k == "definition" && isString:
					m := labelValues.FindStringSubmatch(s)
					if m == nil {
						t.Errorf("%s: template query %q is not label_values(promSelector, label)", where, s)
						continue
					}
					r.exprs = append(r.exprs, exprRef{where, s})
					// label_values(sel, label): the label must be on the selected metric.
					if err := r.addExpr(where, fmt.Sprintf("count by (%s) (%s)", m[2], m[1])); err != nil {
						t.Error(err)
					}
				case k == "description" && isString:
					for _, n := range mentionedName.FindAllString(s, -1) {
						r.mentioned[n] = append(r.mentioned[n], where)
					}
				default:
					walk(where, c)
				}
			}
		case []any:
			for _, c := range v {
				walk(path, c)
			}
		}
	}
	walk("dashboard", v)
}

// PromQL words that are not metric names.
var promKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true, "on": true,
	"ignoring": true, "group_left": true, "group_right": true, "sum": true, "min": true, "max": true, "avg": true,
	"count": true, "stddev": true, "stdvar": true, "topk": true, "bottomk": true, "quantile": true,
	"count_values": true, "group": true, "inf": true, "nan": true, "atan2": true,
}

var groupingWords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// addExpr records the selectors and grouping labels of one PromQL expression.
// It is a lexer, not a parser: enough to find names, matchers and label
// lists (promtool checks the syntax).
func (r *deployRefSet) addExpr(where, expr string) error {
	var last *promSelector // the promSelector a following {…} belongs to
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
	}
	skipSpace := func(i int) int {
		for i < len(expr) && (expr[i] == ' ' || expr[i] == '\n' || expr[i] == '\t') {
			i++
		}
		return i
	}
	readString := func(i int) (string, int, error) {
		q := expr[i]
		var b strings.Builder
		for j := i + 1; j < len(expr); j++ {
			switch {
			case expr[j] == '\\' && q != '`' && j+1 < len(expr):
				j++
				b.WriteByte(expr[j])
			case expr[j] == q:
				return b.String(), j + 1, nil
			default:
				b.WriteByte(expr[j])
			}
		}
		return "", 0, fmt.Errorf("%s: unterminated string in %q", where, expr)
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == ' ' || c == '\n' || c == '\t':
			i++
			continue
		case c == '"' || c == '\'' || c == '`':
			_, j, err := readString(i)
			if err != nil {
				return err
			}
			i = j
		case c == '[':
			j := strings.IndexByte(expr[i:], ']')
			if j < 0 {
				return fmt.Errorf("%s: unterminated [ in %q", where, expr)
			}
			i += j + 1
			continue // a range belongs to the promSelector before it; keep last
		case c == '$':
			i++
			if i < len(expr) && expr[i] == '{' {
				i += strings.IndexByte(expr[i:], '}') + 1
			}
			for i < len(expr) && isIdent(expr[i], false) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.' || (expr[i] == '-' || expr[i] == '+') && (expr[i-1] == 'e' || expr[i-1] == 'E')) {
				i++
			}
		case c == '{':
			s := last
			if s == nil {
				r.selectors = append(r.selectors, promSelector{where: where})
				s = &r.selectors[len(r.selectors)-1]
			}
			i++
			for {
				i = skipSpace(i)
				if i >= len(expr) {
					return fmt.Errorf("%s: unterminated { in %q", where, expr)
				}
				if expr[i] == '}' {
					i++
					break
				}
				if expr[i] == ',' {
					i++
					continue
				}
				j := i
				for j < len(expr) && isIdent(expr[j], j == i) {
					j++
				}
				label := expr[i:j]
				j = skipSpace(j)
				k := j
				for k < len(expr) && strings.IndexByte("=!~", expr[k]) >= 0 {
					k++
				}
				op := expr[j:k]
				k = skipSpace(k)
				if label == "" || op == "" || k >= len(expr) || strings.IndexByte("\"'`", expr[k]) < 0 {
					return fmt.Errorf("%s: cannot read the matchers of %q", where, expr)
				}
				value, next, err := readString(k)
				if err != nil {
					return err
				}
				s.matchers = append(s.matchers, promMatcher{label, op, value})
				i = next
			}
			last = nil
			continue
		case isIdent(c, true):
			j := i
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			word := expr[i:j]
			next := skipSpace(j)
			switch {
			case groupingWords[word] && next < len(expr) && expr[next] == '(':
				end := strings.IndexByte(expr[next:], ')')
				if end < 0 {
					return fmt.Errorf("%s: unterminated %s ( in %q", where, word, expr)
				}
				for _, l := range strings.Split(expr[next+1:next+end], ",") {
					if l = strings.TrimSpace(l); l != "" {
						r.grouping[where+"\x00"+expr] = append(r.grouping[where+"\x00"+expr], l)
					}
				}
				i = next + end + 1
				last = nil
				continue
			case promKeywords[word] || next < len(expr) && expr[next] == '(':
				// an operator, an aggregation or a function
			default:
				r.selectors = append(r.selectors, promSelector{where: where, name: word})
				r.groupNames[where+"\x00"+expr] = append(r.groupNames[where+"\x00"+expr], word)
				i = j
				last = &r.selectors[len(r.selectors)-1]
				continue
			}
			i = j
		default:
			i++
		}
		last = nil
	}
	return nil
}

// check resolves every reference against a scrape and returns the problems.
func (r *deployRefSet) check(sc deployScrape) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	isTarget := func(l string) bool { return slices.Contains(r.targetLabels, l) }
	labelsOf := func(name string) (map[string]map[string]bool, bool) {
		if name == "up" {
			return map[string]map[string]bool{}, true
		}
		l, ok := sc.samples[name]
		return l, ok
	}
	for _, s := range r.selectors {
		if strings.Contains(s.name, ":") {
			if !r.recorded[s.name] {
				add("%s: %s is no recording rule of framebus-rules.yml", s.where, s.name)
			}
			continue
		}
		labels, ok := labelsOf(s.name)
		if !ok {
			add("%s: metric %s is not exported", s.where, s.name)
			continue
		}
		for _, m := range s.matchers {
			values, isLabel := labels[m.label]
			switch {
			case isTarget(m.label):
			case !isLabel:
				add("%s: %s has no label %q", s.where, s.name, m.label)
			case strings.Contains(m.value, "$"):
			case m.op == "=" && !values[m.value]:
				add("%s: %s{%s=%q}: no such value (seen: %s)", s.where, s.name, m.label, m.value, deployKeys(values))
			case m.op == "=~" && regexp.MustCompile(`^[\w:-]+(\|[\w:-]+)*$`).MatchString(m.value):
				for _, v := range strings.Split(m.value, "|") {
					if !values[v] {
						add("%s: %s: %s value %q does not occur (seen: %s)", s.where, s.name, m.label, v, deployKeys(values))
					}
				}
			}
		}
	}
	for key, labels := range r.grouping {
		where, expr, _ := strings.Cut(key, "\x00")
		for _, l := range labels {
			found := isTarget(l)
			for _, n := range r.groupNames[key] {
				if ls, ok := labelsOf(n); ok {
					_, has := ls[l]
					found = found || has
				}
			}
			if !found {
				add("%s: label %q of by/without/on in %q is on none of its metrics", where, l, expr)
			}
		}
	}
	for n, wheres := range r.mentioned {
		if _, ok := sc.samples[n]; !ok && !r.recorded[n] && sc.families[n] == nil {
			add("%s: mentions %s, which is neither exported nor recorded", wheres[0], n)
		}
	}
	sort.Strings(problems)
	return problems
}

func deployKeys(m map[string]bool) string {
	var k []string
	for v := range m {
		k = append(k, v)
	}
	sort.Strings(k)
	return strings.Join(k, ", ")
}

// --- the scrape -----------------------------------------------------------------

// deployScrape is one /metrics response: families by name, and per sample name
// (histograms have _bucket, _sum and _count) its label names and values.
type deployScrape struct {
	families map[string]*dto.MetricFamily
	samples  map[string]map[string]map[string]bool
}

func scrapeFamilies(t testing.TB, addr string) deployScrape {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape /metrics: %v", err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	sc := deployScrape{families: fams, samples: map[string]map[string]map[string]bool{}}
	note := func(name string, m *dto.Metric, extra ...string) {
		ls := sc.samples[name]
		if ls == nil {
			ls = map[string]map[string]bool{}
			sc.samples[name] = ls
		}
		for _, lp := range m.GetLabel() {
			if ls[lp.GetName()] == nil {
				ls[lp.GetName()] = map[string]bool{}
			}
			ls[lp.GetName()][lp.GetValue()] = true
		}
		for _, e := range extra {
			if ls[e] == nil {
				ls[e] = map[string]bool{}
			}
		}
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				note(name+"_bucket", m, "le")
				note(name+"_sum", m)
				note(name+"_count", m)
			case dto.MetricType_SUMMARY:
				note(name, m, "quantile")
				note(name+"_sum", m)
				note(name+"_count", m)
			default:
				note(name, m)
			}
		}
	}
	return sc
}

// value returns the value of an unlabelled gauge or counter, or -1 if the
// family does not have exactly one series.
func (sc deployScrape) value(name string) float64 {
	f := sc.families[name]
	if f == nil || len(f.GetMetric()) != 1 {
		return -1
	}
	m := f.GetMetric()[0]
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetCounter().GetValue()
}

// --- files ----------------------------------------------------------------------

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t testing.TB) ruleFile {
	t.Helper()
	var rf ruleFile
	unmarshalYAML(t, "prometheus/framebus-rules.yml", &rf)
	return rf
}

func readDeploy(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func unmarshalYAML(t testing.TB, name string, v any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(readDeploy(t, name)), v); err != nil {
		t.Fatalf("deploy/%s: %v", name, err)
	}
}
