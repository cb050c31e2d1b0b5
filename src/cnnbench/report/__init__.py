"""Reports: tables, figures, HTML and Markdown pages."""
