"""bear_classifier.collect against a loopback web server: real photos and every kind of bad response.

The only thing replaced is the search call (`SearchSource(search=fake)`): downloading, decoding,
deduplication, the manifest and resuming all run for real over HTTP on 127.0.0.1.
"""
import json, os, subprocess, sys, time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from bear_classifier import download
from bear_classifier.collect import bear_collect, collect_images
from bear_classifier.download import DEFAULT_QUERIES, CollectError, SearchSource
from bear_classifier.files import sha256_file
from bear_classifier.manifest import MANIFEST_COLUMNS, append_manifest, last_rows, read_manifest, usable_files
from bear_classifier.testing import WebServer, closed_port_url, image_bytes, png_bomb

TIMEOUT = 1.0          # per-download budget in these tests (the slow routes take 3 s)
MAX_BYTES = 2_000_000
LIMITS = dict(timeout=TIMEOUT, max_bytes=MAX_BYTES, max_redirects=3, progress=False, workers=6)


@pytest.fixture(scope='module')
def web(sample_photos):
    "Real photos at several sizes and formats, plus 404/500/HTML/truncated/empty/bomb/slow/loop/too-large routes"
    p = sample_photos
    with WebServer() as s:
        chelsea = image_bytes(p['chelsea'], quality=90)
        astronaut = image_bytes(p['astronaut'], size=512)
        exif = Image.Exif(); exif[0x0112] = 6          # "rotate 90 degrees clockwise to display"
        urls = {
            'grizzly': [
                s.add('/g/chelsea.jpg', chelsea),
                s.add('/g/coffee-800.png', image_bytes(p['coffee'], 'PNG', size=800), content_type='image/png'),
                s.add('/g/chelsea-copy.jpg', chelsea),                                  # exact duplicate, new URL
                s.add('/g/chelsea-220.jpg', image_bytes(p['chelsea'], size=220, quality=75)),  # near duplicate
                s.add('/g/gone.jpg', b'not found', status=404, content_type='text/plain'),
                s.add('/g/error.jpg', b'oops', status=500, content_type='text/plain'),
                s.add('/g/page.jpg', b'<!doctype html><html><body>Sign in to see this image</body></html>'),
                s.redirect('/g/loop-a', '/g/loop-b'),
            ],
            'black': [
                s.add('/b/astronaut-512.jpg', astronaut),
                s.add('/b/rocket.webp', image_bytes(p['rocket'], 'WEBP', quality=85), content_type='image/webp'),
                s.add('/b/truncated.jpg', image_bytes(p['china'])[:9000]),
                s.add('/b/empty.jpg', b''),
                s.add('/b/bomb.png', png_bomb(), content_type='image/png'),
                s.add('/b/slow.jpg', image_bytes(p['china'], size=300), delay=3.0),           # headers too late
                s.add('/b/trickle.jpg', image_bytes(p['flower'], size=300), trickle=(20, 0.15)),  # body too slow
                s.redirect('/b/moved.jpg', '/b/china.jpg'),                                   # one redirect: fine
                s.add('/b/big.jpg', b'\xff\xd8' + b'\0' * (MAX_BYTES + 10)),                   # declared too large
                s.add('/b/endless.jpg', b'\xff\xd8' + b'\0' * (MAX_BYTES + 10), send_length=False),  # streamed too large
                closed_port_url('/b/refused.jpg'),
            ],
            'teddy': [
                s.add('/t/flower.jpg', image_bytes(p['flower'], quality=88)),
                s.add('/t/flower-sideways.jpg', image_bytes(p['china'], size=600, exif=exif)),
                s.add('/t/astronaut-300.png', image_bytes(p['astronaut'], 'PNG', size=300), content_type='image/png'),
                s.url('/g/chelsea.jpg'),        # kept under grizzly already: a conflict, not a second download
                s.url('/g/gone.jpg'),           # failed under grizzly already: skipped
            ],
        }
        s.redirect('/g/loop-b', '/g/loop-a')
        s.add('/b/china.jpg', image_bytes(p['china'], quality=90))
        s.urls = urls
        yield s


def fake_search(web, calls=None):
    "Stands in for the ddgs call: the loopback URLs for each query"
    by_query = {DEFAULT_QUERIES[l]: u for l, u in web.urls.items()}
    def search(query, max_results):
        if calls is not None: calls.append(query)
        return by_query[query][:max_results]
    return search


def reasons(rows, label=None):
    return Counter(r['reason'] for r in rows if r['status'] == 'failed' and label in (None, r['label']))


def test_collect_from_search(web, tmp_path):
    dest = tmp_path/'bears'
    calls = []
    src = SearchSource(search=fake_search(web, calls), pause=0)
    t = time.monotonic()
    res = collect_images(dest=dest, source=src, **LIMITS)
    elapsed = time.monotonic() - t
    print('\n' + str(res))
    assert calls == ['grizzly bear', 'black bear', 'teddy bear']
    assert elapsed < 2 * TIMEOUT + 3, f'slow routes were not cut off at the timeout ({elapsed:.1f}s)'

    kept = {l: s.kept for l, s in res.labels.items()}
    assert kept == {'grizzly': 2, 'black': 3, 'teddy': 4}
    assert res['grizzly'].duplicates == 2 and res['teddy'].skipped == 1
    rows = read_manifest(dest)
    assert reasons(rows, 'grizzly') == {'http_404': 1, 'http_500': 1, 'not_an_image': 1, 'too_many_redirects': 1}
    assert reasons(rows, 'black') == {'truncated': 1, 'empty': 1, 'decompression_bomb': 1, 'timeout': 2,
                                      'too_large': 2, 'connection_error': 1}
    assert res['black'].failures == reasons(rows, 'black')
    assert all(r['file'] == '' for r in rows if r['status'] != 'ok')

    # duplicates point at the file they duplicate
    by_url = {r['url']: r for r in rows}
    chelsea = by_url[web.url('/g/chelsea.jpg')]['file']
    assert by_url[web.url('/g/chelsea-copy.jpg')]['reason'] == f'duplicate_of:{chelsea}'
    assert by_url[web.url('/g/chelsea-220.jpg')]['reason'] == f'duplicate_of:{chelsea}'
    assert by_url[web.url('/g/chelsea-220.jpg')]['status'] == 'duplicate'

    # cross-label near duplicates: both kept, both marked, listed in the summary
    assert len(res.conflicts) == 2
    astro_black = next(r['file'] for r in rows if r['url'].endswith('/b/astronaut-512.jpg'))
    astro_teddy = next(r for r in rows if r['url'].endswith('/t/astronaut-300.png'))
    assert astro_teddy['status'] == 'ok' and astro_teddy['reason'] == f'conflict_with:{astro_black}'
    last = last_rows(dest)
    assert last[astro_black]['reason'] == f"conflict_with:{astro_teddy['file']}"
    assert last[chelsea]['reason'].startswith('conflict_with:teddy/')
    assert 'cross-label near-duplicate' in str(res)

    # files on disk: exactly the usable ones, all RGB JPEGs within max_side, manifest consistent
    files = usable_files(dest)
    assert len(files) == 9 == res.totals()['total']
    assert sorted(f.relative_to(dest).as_posix() for f in files) == sorted(last)
    for f in files:
        with Image.open(f) as im:
            assert im.format == 'JPEG' and im.mode == 'RGB' and max(im.size) <= 400
        r = last[f.relative_to(dest).as_posix()]
        assert (int(r['width']), int(r['height'])) == Image.open(f).size
        assert sha256_file(f) == r['sha256']
    sideways = by_url[web.url('/t/flower-sideways.jpg')]
    assert int(sideways['height']) > int(sideways['width'])      # EXIF orientation applied
    assert [p for p in dest.rglob('*') if p.name.startswith('.') or p.suffix in ('.part', '.tmp')] == []
    assert all(list(r) == MANIFEST_COLUMNS for r in rows)

    # the re-run downloads nothing and writes nothing
    hits, n_rows = web.total_hits, len(rows)
    again = collect_images(dest=dest, source=SearchSource(search=fake_search(web), pause=0), **LIMITS)
    assert web.total_hits == hits
    assert len(read_manifest(dest)) == n_rows
    assert again.totals()['kept'] == again.totals()['failed'] == again.totals()['duplicates'] == 0
    assert again.totals()['skipped'] == sum(len(u) for u in web.urls.values()) - 0
    assert again.totals()['total'] == 9
    assert web.hits['/g/chelsea.jpg'] == 1       # the teddy "conflict" re-used the file, it did not re-download

    # asked to, a third run retries the failures that may be temporary, and only those
    before = Counter(web.hits)
    retried = collect_images(dest=dest, source=SearchSource(search=fake_search(web), pause=0), retry_failed=True, **LIMITS)
    assert Counter(web.hits) - before == Counter({'/g/error.jpg': 1, '/b/slow.jpg': 1, '/b/trickle.jpg': 1})
    assert retried['black'].failures == {'timeout': 2, 'connection_error': 1}
    assert retried['grizzly'].failures == {'http_500': 1}
    assert len(usable_files(dest)) == 9


def test_interrupted_run_leaves_no_partial_file_and_resumes(web, tmp_path, monkeypatch):
    dest = tmp_path/'bears'
    real_replace, n = os.replace, []
    def replace_then_interrupt(a, b):
        n.append(b)
        if len(n) == 3: raise KeyboardInterrupt     # Ctrl-C just before the third file is renamed into place
        return real_replace(a, b)
    monkeypatch.setattr(os, 'replace', replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        collect_images(dest=dest, source=SearchSource(search=fake_search(web), pause=0), **LIMITS)
    monkeypatch.setattr(os, 'replace', real_replace)
    assert [p for p in dest.rglob('*') if p.name.startswith('.')] == []
    on_disk = sorted(p.relative_to(dest).as_posix() for p in dest.glob('*/*.jpg'))
    assert on_disk == sorted(last_rows(dest)) and len(on_disk) == 2
    res = collect_images(dest=dest, source=SearchSource(search=fake_search(web), pause=0), **LIMITS)
    assert len(usable_files(dest)) == 9
    assert res.totals()['kept'] == 7


def test_search_offline_is_one_clear_line(tmp_path, monkeypatch):
    from ddgs.exceptions import DDGSException
    def offline(query, max_results):
        raise DDGSException("DNSError: error sending request for url (https://www.bing.com/images/async?q=grizzly+bear)")
    monkeypatch.setattr(download, 'ddgs_image_search', offline)
    with pytest.raises(SystemExit) as e:
        bear_collect(dest=str(tmp_path/'bears'), quiet=True)
    assert str(e.value) == ("bear-collect: web search unreachable (no network?); "
                            "pass --source folder:PATH or --source urls:FILE")
    assert not (tmp_path/'bears').exists()         # nothing created for a run that could not start


def test_search_backs_off_on_rate_limits():
    from ddgs.exceptions import RatelimitException, TimeoutException
    calls = []
    def limited(query, max_results):
        calls.append(time.monotonic())
        if len(calls) <= 2: raise RatelimitException('202 Ratelimit')
        if len(calls) == 3: raise TimeoutException('timed out')
        return [f'http://example.org/{i}.jpg' for i in range(10)]
    urls = SearchSource(search=limited, pause=0, backoff=0.05).candidates('grizzly', 'grizzly bear', 4)
    assert len(urls) == 4 and len(calls) == 4
    waits = [b - a for a, b in zip(calls, calls[1:])]
    assert waits[0] >= 0.05 and waits[1] >= 0.1 and waits[2] >= 0.2       # exponential
    with pytest.raises(CollectError, match='rate-limiting'):
        SearchSource(search=lambda q, max_results: (_ for _ in ()).throw(RatelimitException('x')),
                     pause=0, retries=2, backoff=0.01).candidates('grizzly', 'grizzly bear', 4)


def test_cli_with_url_list(web, tmp_path):
    lst = tmp_path/'urls.csv'
    lst.write_text('label,url\n' + ''.join(f'{l},{u}\n' for l, us in web.urls.items() for u in us[:3]))
    dest = tmp_path/'data'
    cmd = [str(Path(sys.executable).with_name('bear-collect')), '--source', f'urls:{lst}', '--dest', str(dest),
           '--quiet', '--timeout', '2', '--max-side', '128']
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'failures by reason' in out.stdout and 'all ' in out.stdout
    rows = read_manifest(dest)
    assert {r['source'] for r in rows} == {'urls'} and {r['label'] for r in rows} == {'grizzly', 'black', 'teddy'}
    assert all(max(Image.open(f).size) <= 128 for f in usable_files(dest))
    bad = subprocess.run(cmd[:1] + ['--source', 'urls:/no/such/file.csv', '--dest', str(dest)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip() == 'bear-collect: URL list /no/such/file.csv not found'


def test_concurrent_appends_from_processes(tmp_path):
    code = ("import sys; from bear_classifier.manifest import append_manifest\n"
            "for i in range(50): append_manifest(sys.argv[1], [dict(file=f'x/{sys.argv[2]}-{i}-{j}.jpg', label='x', "
            "source='folder', status='ok', reason='a,b \"quoted\"') for j in range(3)])")
    procs = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path), str(k)]) for k in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    rows = read_manifest(tmp_path)
    assert len(rows) == 600 and len({r['file'] for r in rows}) == 600
    assert {r['reason'] for r in rows} == {'a,b "quoted"'}


def test_import_reference_bears(shared_data, tmp_path):
    "Import ../shared/data/bears through the folder source; the numbers go into the closing note"
    res = collect_images(dest=tmp_path/'bears', source=f'folder:{shared_data/"bears"}',
                         progress=False)
    print('\n' + str(res))
    out = Path(os.environ.get('BEAR_COLLECT_SUMMARY', tmp_path/'import_summary.json'))
    out.write_text(json.dumps(res.to_dict(), indent=1))
    n_src = {l: len(list((shared_data/'bears'/l).glob('*.jpg'))) for l in ('grizzly', 'black', 'teddy')}
    assert {l: s.candidates for l, s in res.labels.items()} == n_src
    t = res.totals()
    assert t['kept'] + t['duplicates'] + t['failed'] == sum(n_src.values())
    assert t['failed'] == 0 and t['kept'] >= 0.95 * sum(n_src.values())
    assert len(usable_files(tmp_path/'bears')) == t['kept']
    rows = read_manifest(tmp_path/'bears')
    assert {r['source'] for r in rows} == {'folder'}
    assert len([r for r in rows if r['reason'].startswith('conflict_with:')]) == 2 * len(res.conflicts)


def test_trashed_and_hand_added_images_do_not_come_back(web, sample_photos, tmp_path):
    "A photo the cleaner trashed, or one the user put in a label folder, is a duplicate when found again"
    p, dest = sample_photos, tmp_path/'bears'
    first = [web.add('/x/coffee.jpg', image_bytes(p['coffee'], size=400)), web.add('/x/rocket.jpg', image_bytes(p['rocket'], size=400))]
    again = [web.add('/x/coffee-350.jpg', image_bytes(p['coffee'], size=350, quality=80)),
             web.add('/x/china-500.jpg', image_bytes(p['china'], size=500))]
    search = lambda urls: SearchSource(search=lambda q, max_results: urls, pause=0)
    collect_images(['grizzly'], dest=dest, source=search(first), **LIMITS)
    coffee = next(r['file'] for r in read_manifest(dest) if r['url'] == first[0])
    (dest/'.trash'/'grizzly').mkdir(parents=True)
    os.replace(dest/coffee, dest/'.trash'/coffee)                      # what the cleaner does
    append_manifest(dest, dict(file=coffee, label='grizzly', source='search', status='trashed', reason='not a bear'))
    (dest/'grizzly'/'mine.png').write_bytes(image_bytes(p['china'], 'PNG', size=450))   # added by hand, no row
    res = collect_images(['grizzly'], dest=dest, source=search(again), **LIMITS)
    assert res['grizzly'].kept == 0 and res['grizzly'].duplicates == 2
    reasons = {r['url']: r['reason'] for r in read_manifest(dest) if r['status'] == 'duplicate'}
    assert reasons == {again[0]: f'duplicate_of:{coffee}', again[1]: 'duplicate_of:grizzly/mine.png'}
    assert sorted(f.name for f in usable_files(dest)) == sorted(['mine.png', Path(next(
        r['file'] for r in read_manifest(dest) if r['url'] == first[1])).name])
