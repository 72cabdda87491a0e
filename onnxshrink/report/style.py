"""The report page's CSS: one column up to 980 px wide; below 600 px the charts
switch to their narrow drawing and tables turn into one card per row."""

STYLE = """
:root{--ink:#1d232b;--muted:#5c6670;--line:#e3e6ea;--pass:#1f8a4c;--fail:#c8382e;--bar:#3b7dd8}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:var(--ink);background:#fff}
main{max-width:980px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:30px 0 6px}
.sub{color:var(--muted);margin:2px 0} .muted{color:var(--muted)} p{margin:6px 0}
.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;overflow-wrap:anywhere;
word-break:break-word}
.verdict{display:inline-block;margin:10px 0 2px;padding:4px 10px;border-radius:14px;font-weight:600}
.verdict.pass{background:#e3f4ea;color:var(--pass)} .verdict.fail{background:#fbe6e4;color:var(--fail)}
.pass{color:var(--pass);font-weight:600} .fail{color:var(--fail);font-weight:600}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:10px;margin:16px 0}
.kpi{border:1px solid var(--line);border-radius:8px;padding:9px 12px}
.kpi .k{color:var(--muted);font-size:13px} .kpi .v{font-size:19px;font-weight:650}
.kpi .d{color:var(--muted);font-size:13px} .kpi.bad{border-color:var(--fail)} .kpi.bad .v{color:var(--fail)}
.chartbox{border:1px solid var(--line);border-radius:8px;padding:6px;margin:8px 0}
svg.chart{display:block;width:100%;height:auto} svg.narrow{display:none}
svg .grid{stroke:#edf0f3} svg .axis{stroke:#9aa3ad} svg .tick{fill:var(--muted)} svg .lbl{fill:var(--ink)}
svg .plabel{fill:var(--ink);font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;color:var(--muted);font-size:13px;margin:4px 0 10px}
.legend span{display:inline-flex;align-items:center;gap:5px}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:13px}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.name-cell{min-width:220px} .nodes,.origin{color:var(--muted);font-size:12.5px} .keptfloat{color:#8a5a00;font-weight:600}
.meter{display:inline-block;width:56px;height:8px;background:#eef0f3;border-radius:4px;margin-left:6px;vertical-align:middle}
.meter span{display:block;height:100%;background:var(--bar);border-radius:4px}
footer{margin-top:32px;font-size:13px}
@media (max-width:600px){
main{padding:12px 12px 28px} h1{font-size:20px}
svg.wide{display:none} svg.narrow{display:block}
table.cards thead{display:none}
table.cards tr{display:block;border-bottom:1px solid var(--line);padding:6px 0}
table.cards td{display:flex;justify-content:space-between;gap:12px;border:0;padding:2px 0;text-align:right;white-space:normal}
table.cards td::before{content:attr(data-label);color:var(--muted);text-align:left;flex:none;max-width:55%}
table.cards td.name-cell{display:block;text-align:left;min-width:0} table.cards td.name-cell::before{content:none}
}
"""
