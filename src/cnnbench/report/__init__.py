"""Reports: tables, figures, HTML and Markdown pages.

    tables.py   columns with formatters -> Markdown / HTML tables
    figures.py  matplotlib figures (curves, confusion, galleries, top-5, bubble chart)
    compare.py  `cnnbench compare`: joined rows, mean ± std over seeds, McNemar tests, flags
    page.py     a page as blocks -> self-contained HTML (base64 figures) and Markdown
    reports.py  `cnnbench report`: the page of a run folder or of a comparison folder
"""
