"""The command line: `zolightning fit|validate|test|predict` (LightningCLI), `export`, `generate`, `optimizer`,
`configs`, `compare`."""
