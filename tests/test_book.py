"""The website: it builds with warnings as errors, its links and images resolve, it loads
nothing from the network, every chapter and lab page has its launch buttons, equations carry
their chapter's number, and the results page quotes only numbers that chapters record.

The site is built once per session (a module-scoped fixture) with execution off, because nbval
already executes every notebook in this suite; `make book` builds the same site with every
notebook executed. The results page's pasted numbers need executed notebooks, so one small
executed build (``test_results_and_widgets_in_an_executed_build``) proves that mechanism and
the local widget scripts with the project's own configuration.
"""
import html.parser
import posixpath
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import nbformat

from fmlab.results import quoted
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
JB = Path(sys.executable).parent / "jupyter-book"
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def toc_part(caption: str) -> list[str]:
    part = next(p for p in TOC["parts"] if p["caption"] == caption)
    return [c["file"] for c in part["chapters"]]


CHAPTERS = toc_part("Chapters")
LABS = toc_part("Labs")
BUNDLED_WIDGETS = {"@jupyter-widgets/base", "@jupyter-widgets/controls",
                   "@jupyter-widgets/output"}  # what book/_assets/embed-amd.js holds


def copy_sources(dest: Path) -> None:
    """What the book is built from: the configuration, book/ and the student labs."""
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "_toc.yml", dest)
    shutil.copytree(ROOT / "book", dest / "book", ignore=shutil.ignore_patterns("_build"))
    shutil.copytree(ROOT / "labs" / "student", dest / "labs" / "student")


def build(src: Path, out: Path, config: dict) -> tuple[int, str]:
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = subprocess.run([str(JB), "build", str(src), "-W", "-n", "--keep-going",
                          "--path-output", str(out)], capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built website (execution off), built once for every test in this module."""
    tmp = tmp_path_factory.mktemp("site")
    copy_sources(tmp / "src")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    # Without execution the chapters glue nothing, so the results page's pasted numbers are
    # missing here (and only here); test_results_and_widgets_in_an_executed_build and
    # `make book` check them with executed notebooks.
    config["sphinx"]["config"]["suppress_warnings"] += ["mystnb.glue_ref"]
    code, log = build(tmp / "src", tmp / "out", config)
    assert code == 0, log[-5000:]
    return tmp / "out" / "_build" / "html"


class Page(html.parser.HTMLParser):
    """The resources an HTML page loads, the links it has, and the ids it defines."""

    def __init__(self, text: str):
        super().__init__()
        self.loads, self.links, self.ids, self.tags = [], [], set(), []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag in ("script", "img", "iframe", "source", "video", "audio", "embed") and a.get("src"):
            self.loads.append(a["src"])
        if tag == "link" and a.get("href") and set((a.get("rel") or "").split()) & {
                "stylesheet", "preload", "modulepreload", "icon", "shortcut", "prefetch"}:
            self.loads.append(a["href"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        for key, value in a.items():
            if key.startswith("data-") and value and re.match(r"(https?:)?//", value):
                self.loads.append(value)  # e.g. data-jupyter-widgets-cdn


def pages(html_dir: Path) -> dict[Path, Page]:
    """Every page of the site (not the theme's template snippets under _static/)."""
    return {p: Page(p.read_text(encoding="utf-8")) for p in sorted(html_dir.rglob("*.html"))
            if p.relative_to(html_dir).parts[0] != "_static"}


def is_external(url: str) -> bool:
    return bool(re.match(r"^([a-z][a-z0-9+.-]*:|//)", url, re.I))


@pytest.mark.slow
def test_every_page_is_built(site):
    for page in ["book/intro", *CHAPTERS, *LABS, "book/instructors", "book/results",
                 "book/errata", "book/bibliography"]:
        assert (site / f"{page}.html").is_file(), page
    for lab in LABS:
        student = (site / f"{lab}.html").read_text()
        assert "NotImplementedError" in student and "BEGIN SOLUTION" not in student, lab


def test_every_lab_and_student_notebook_is_in_the_toc():
    labs = sorted(f"labs/student/{p.stem}" for p in ROOT.glob("labs/*.ipynb"))
    assert sorted(LABS) == labs, "each lab in labs/ has its page labs/student/NN in _toc.yml"
    assert all(f.startswith("labs/student/") for f in LABS)
    chapters = sorted(f"book/{p.stem}" for p in ROOT.glob("book/*.ipynb"))
    assert sorted(CHAPTERS) == chapters, "each chapter in book/ is in _toc.yml's Chapters"


@pytest.mark.slow
def test_internal_links_and_images_resolve(site):
    parsed = pages(site)
    broken = []
    for path, page in parsed.items():
        for url in page.links + page.loads:
            if is_external(url) or url.startswith("#") and url[1:] in page.ids or url == "#":
                continue
            parts = urllib.parse.urlsplit(url)
            target = (path.parent / urllib.parse.unquote(parts.path)).resolve() if parts.path \
                else path
            if target.is_dir():
                target = target / "index.html"
            where = f"{path.relative_to(site)}: {url}"
            if not target.exists():
                broken.append(f"{where} (no file)")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else Page(target.read_text()).ids
                if urllib.parse.unquote(parts.fragment) not in ids:
                    broken.append(f"{where} (no id #{parts.fragment})")
    assert not broken, f"{len(broken)} broken links:\n" + "\n".join(sorted(set(broken))[:50])


@pytest.mark.slow
def test_no_page_loads_anything_from_the_network(site):
    remote = []
    for path, page in pages(site).items():
        remote += [f"{path.relative_to(site)}: {u}" for u in page.loads if is_external(u)]
        text = path.read_text(encoding="utf-8")
        remote += [f"{path.relative_to(site)}: {m}" for m in
                   re.findall(r"@import\s+url\(['\"]?(?:https?:)?//[^)]*\)", text)]
    for css in site.rglob("*.css"):
        text = css.read_text(encoding="utf-8", errors="replace")
        remote += [f"{css.relative_to(site)}: {m}" for m in re.findall(
            r"(?:@import\s+(?:url\()?|url\()\s*['\"]?((?:https?:)?//[^'\")\s]+)", text)]
    assert not remote, "the site loads from the network:\n" + "\n".join(remote[:50])
    # Math is rendered by a local MathJax, and no page points MathJax at a CDN.
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert not [p for p in site.rglob("*.html") if "cdn.jsdelivr.net/npm/mathjax" in p.read_text()]
    # The widget scripts are served from _static (book/_assets/ in the sources).
    for name in CONFIG["sphinx"]["config"]["nb_ipywidgets_js"]:
        assert not is_external(name) and (site / "_static" / name).is_file(), name


def launch_links(page: Page) -> dict[str, str]:
    return {a.get("title") or a.get("data-bs-original-title") or "": a.get("href", "")
            for tag, a in page.tags if tag == "a" and a.get("href")}


@pytest.mark.slow
@pytest.mark.parametrize("doc", CHAPTERS + LABS)
def test_chapter_and_lab_pages_have_launch_buttons(site, doc):
    url, branch = CONFIG["repository"]["url"], CONFIG["repository"]["branch"]
    org_repo = urllib.parse.urlsplit(url).path.strip("/")
    colab = (f"{CONFIG['launch_buttons']['colab_url'].rstrip('/')}/github/{org_repo}"
             f"/blob/{branch}/{doc}.ipynb")
    page = Page((site / f"{doc}.html").read_text(encoding="utf-8"))
    hrefs = [a.get("href") for tag, a in page.tags if tag == "a"]
    assert colab in hrefs, f"{doc}: no Colab button opening {colab}"
    download = posixpath.relpath(f"_sources/{doc}.ipynb", posixpath.dirname(doc))
    assert download in hrefs, f"{doc}: no download button for the notebook ({download})"
    assert url in hrefs, f"{doc}: no repository button"


@pytest.mark.slow
def test_equations_carry_their_chapter_number(site):
    numbered = 0
    for number, doc in enumerate(CHAPTERS, 1):
        text = (site / f"{doc}.html").read_text(encoding="utf-8")
        eqnos = re.findall(r'<span class="eqno">\(([^)]*)\)', text)
        wrong = [n for n in eqnos if not re.fullmatch(rf"{number}\.\d+", n)]
        assert not wrong, f"{doc}: equation numbers {wrong} do not start with {number}."
        if eqnos:
            assert eqnos[0] == f"{number}.1", f"{doc}: the first equation is ({eqnos[0]})"
            numbered += 1
    assert numbered >= 2, "no chapter has numbered equations: is math_numfig still on?"


# The results page ------------------------------------------------------------------------

RECORD = re.compile(r"""\brecord\(\s*["']([a-z0-9_]+)["']""")


def test_results_page_quotes_the_keys_chapters_record():
    """Statically, what can be seen without running: every key a chapter records by its
    literal name is quoted, and every quoted notebook exists and records something. The keys a
    chapter builds at run time are compared with the page when tests/test_colab.py
    executes it."""
    page = quoted((ROOT / "book" / "results.md").read_text(encoding="utf-8"))
    for path in sorted(ROOT.glob("book/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        literal = set(RECORD.findall(code))
        unquoted = sorted(k for k in literal if (path.name, k) not in page)
        assert not unquoted, (f"{path.name} records numbers the results page does not show; "
                              f"add a row for each (see book/results.md): {unquoted}")
        if any(nb_name == path.name for nb_name, _ in page):
            assert "record(" in code, f"the results page quotes {path.name}, which records nothing"
    notebooks = {p.name for p in ROOT.glob("book/*.ipynb")}
    assert {nb_name for nb_name, _ in page} <= notebooks, "the results page quotes a missing notebook"


def test_results_page_says_the_profile_the_build_uses():
    makefile = (ROOT / "Makefile").read_text()
    book = makefile.split("\nbook:", 1)[1].split("\n\n", 1)[0]
    assert "FMLAB_PROFILE=quick" in book and "jupyter-book build" in book
    assert "`FMLAB_PROFILE=quick`" in (ROOT / "book" / "results.md").read_text()


DEMO_CHAPTER = [
    "import fmlab.results, ipywidgets, torch",
    "acc = fmlab.results.record('demo_accuracy', torch.tensor(0.9591))\n"
    "fmlab.results.record('demo_count', 4000)",
    "ipywidgets.IntSlider(value=3, min=0, max=10, description='epochs')",
]
DEMO_RESULTS = """# Results

| what | measured |
|---|---|
| accuracy | {glue:text}`01_demo.ipynb::demo_accuracy:.1%` |
| images | {glue:text}`01_demo.ipynb::demo_count:,d` |
"""


@pytest.mark.slow
def test_results_and_widgets_in_an_executed_build(tmp_path):
    """With the project's own configuration and a real executed notebook: the results page
    pastes recorded numbers from another notebook, and widgets use the local scripts."""
    src = tmp_path / "src"
    (src / "book").mkdir(parents=True)
    for assets in ("_assets", "_widget_fonts"):
        shutil.copytree(ROOT / "book" / assets, src / "book" / assets)
    shutil.copy(ROOT / "book" / "references.bib", src / "book")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Demo")] + [
        nbformat.v4.new_code_cell(s) for s in DEMO_CHAPTER])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, src / "book" / "01_demo.ipynb")
    (src / "book" / "results.md").write_text(DEMO_RESULTS)
    (src / "book" / "intro.md").write_text("# Intro\n")
    (src / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": "book/intro", "parts": [
            {"caption": "Chapters", "numbered": 1, "chapters": [{"file": "book/01_demo"}]},
            {"caption": "Back matter", "chapters": [{"file": "book/results"}]}]}))
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "force"
    code, log = build(src, tmp_path / "out", config)
    assert code == 0, log[-5000:]
    html = tmp_path / "out" / "_build" / "html"
    results = (html / "book" / "results.html").read_text()
    assert '<span class="pasted-text">95.9%</span>' in results
    assert '<span class="pasted-text">4,000</span>' in results
    chapter = Page((html / "book" / "01_demo.html").read_text())
    scripts = [a["src"].split("?")[0] for tag, a in chapter.tags
               if tag == "script" and a.get("src")]
    for name in CONFIG["sphinx"]["config"]["nb_ipywidgets_js"]:
        assert f"../_static/{name}" in scripts, (name, scripts)
        assert (html / "_static" / name).is_file()
    # embed-amd.js is an AMD module: without require.js before it, no widget shows
    assert scripts.index("../_static/require.js") < scripts.index("../_static/embed-amd.js")
    assert not [u for u in chapter.loads if is_external(u)], chapter.loads
    state = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>',
                      (html / "book" / "01_demo.html").read_text(), re.S)
    assert state, "the executed page holds no widget state"
    modules = set(re.findall(r'"model_module":\s*"([^"]+)"', state.group(1)))
    assert modules and modules <= BUNDLED_WIDGETS, modules

