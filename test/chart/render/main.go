// Command render renders a Helm chart with Go text/template + sprig, implementing the parts of Helm's
// engine the kagami chart uses (include, tpl, required, toYaml, fromYaml, toJson, lookup, .Release,
// .Chart, .Capabilities, .Values merged from values.yaml, -f files and --set key=value).
// Helm itself cannot be installed on the build machine; this is the same template engine Helm uses.
//
// Usage: render CHART_DIR [-f values.yaml]... [--set a.b=c]... [--namespace ns] [--name release] [--dump-values]
// Output: every rendered manifest as multi-document YAML on stdout, NOTES.txt on stderr.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type values = map[string]interface{}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func readYAML(path string) values {
	b, err := os.ReadFile(path)
	must(err)
	out := values{}
	must(yaml.Unmarshal(b, &out))
	return out
}

// merge deep-merges src into dst like Helm's coalescing of value files (maps merge, everything else replaces).
func merge(dst, src values) values {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

func setPath(dst values, path string, raw string) {
	parts := strings.Split(path, ".")
	m := dst
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]interface{})
		if !ok {
			next = values{}
			m[p] = next
		}
		m = next
	}
	var v interface{} = raw
	// Helm's list syntax: --set registries={a,b}; {} is an empty list
	if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
		list := []interface{}{}
		for _, item := range strings.Split(strings.TrimSuffix(strings.TrimPrefix(raw, "{"), "}"), ",") {
			if item != "" {
				list = append(list, item)
			}
		}
		m[parts[len(parts)-1]] = list
		return
	}
	if b, err := strconv.ParseBool(raw); err == nil {
		v = b
	} else if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
		v = n
	}
	m[parts[len(parts)-1]] = v
}

func toYaml(v interface{}) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

// chartFiles is Helm's .Files: Get returns a chart file's content ("" when missing, as Helm does).
type chartFiles struct{ dir string }

func (f chartFiles) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.dir, name))
	if err != nil {
		return ""
	}
	return string(b)
}

func main() {
	if len(os.Args) < 2 {
		must(fmt.Errorf("usage: render CHART_DIR [-f values.yaml]... [--set k=v]..."))
	}
	chartDir := os.Args[1]
	vals := readYAML(filepath.Join(chartDir, "values.yaml"))
	namespace, name := "kagami", "kagami"
	dumpValues := false
	args := os.Args[2:]
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-f":
			i++
			vals = merge(vals, readYAML(args[i]))
		case "--set":
			i++
			kv := strings.SplitN(args[i], "=", 2)
			setPath(vals, kv[0], kv[1])
		case "--namespace":
			i++
			namespace = args[i]
		case "--dump-values":
			dumpValues = true
		case "--name":
			i++
			name = args[i]
		default:
			must(fmt.Errorf("unknown argument %q", args[i]))
		}
	}
	if dumpValues {
		// the coalesced values, as Helm validates them against values.schema.json before rendering
		b, err := yaml.Marshal(vals)
		must(err)
		j, err := yaml.YAMLToJSON(b)
		must(err)
		os.Stdout.Write(j)
		return
	}
	chartMeta := readYAML(filepath.Join(chartDir, "Chart.yaml"))

	root := template.New("chart")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYaml
	funcs["toJson"] = func(v interface{}) string {
		b, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		j, err := yaml.YAMLToJSON(b)
		if err != nil {
			return ""
		}
		return string(j)
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		out := map[string]interface{}{}
		_ = yaml.Unmarshal([]byte(s), &out)
		return out
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} { return map[string]interface{}{} }
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root.Funcs(funcs).Option("missingkey=zero")

	files, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	must(err)
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		must(err)
		_, err = root.New(filepath.Base(f)).Parse(string(b))
		must(err)
	}

	data := map[string]interface{}{
		"Values": vals,
		"Release": map[string]interface{}{
			"Name": name, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": chartMeta["name"], "Version": chartMeta["version"], "AppVersion": chartMeta["appVersion"],
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30"},
			"APIVersions": apiVersions{"monitoring.coreos.com/v1": false},
		},
		"Template": map[string]interface{}{"BasePath": "kagami/templates"},
		"Files":    chartFiles{dir: chartDir},
	}

	var out bytes.Buffer
	for _, f := range files {
		base := filepath.Base(f)
		if strings.HasPrefix(base, "_") {
			continue
		}
		var buf bytes.Buffer
		must(root.ExecuteTemplate(&buf, base, data))
		if base == "NOTES.txt" {
			fmt.Fprint(os.Stderr, buf.String())
			continue
		}
		for _, doc := range strings.Split(buf.String(), "\n---") {
			if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(doc), "---")) == "" {
				continue
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", base, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(doc), "---")))
		}
	}
	os.Stdout.Write(out.Bytes())
}

// apiVersions implements Helm's .Capabilities.APIVersions.Has.
type apiVersions map[string]bool

func (a apiVersions) Has(v string) bool { return a[v] }
