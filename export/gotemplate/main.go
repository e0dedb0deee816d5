// Renders an Ollama Modelfile TEMPLATE with Go's own text/template, the engine Ollama uses.
//
// stdin:  {"template": "...", "cases": [{"system": "", "messages": [{"role": "user", "content": "hi"}]}]}
// stdout: {"renders": ["..."], "errors": [""]}   (one entry per case; errors[i] is empty when case i rendered)
//
// The data mirrors what Ollama passes to a chat template: .Messages with .Role and .Content, and .System.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Values struct {
	Messages []Message `json:"messages"`
	System   string    `json:"system"`
}

type Request struct {
	Template string   `json:"template"`
	Cases    []Values `json:"cases"`
}

type Response struct {
	Renders []string `json:"renders"`
	Errors  []string `json:"errors"`
}

func main() {
	var req Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate: bad request:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("modelfile").Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate: TEMPLATE does not parse:", err)
		os.Exit(3)
	}
	resp := Response{Renders: make([]string, len(req.Cases)), Errors: make([]string, len(req.Cases))}
	for i, c := range req.Cases {
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, c); err != nil {
			resp.Errors[i] = err.Error()
			continue
		}
		resp.Renders[i] = buf.String()
	}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate:", err)
		os.Exit(2)
	}
}
