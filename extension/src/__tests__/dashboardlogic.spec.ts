/**
 * Unit tests of the dashboard's pure logic: picking the notebook that hosts a kernel, the code it runs, and telling
 * a failed run (kernel error, abort, nothing displayed) from one that displayed the widget.
 */
import {
  closeWidgetsCode,
  consoleDashboardCode,
  dashboardCode,
  dashboardFailure,
  dashboardTitle,
  pickNotebookForKernel,
  WIDGET_VIEW_MIMETYPE,
  widgetModelIds
} from '../dashboardlogic';

interface IFake {
  name: string;
  kernel: string | null | undefined;
}

const kernelOf = (f: IFake) => f.kernel;
const a: IFake = { name: 'a.ipynb', kernel: 'k1' };
const b: IFake = { name: 'b.ipynb', kernel: 'k2' };
const c: IFake = { name: 'c.ipynb', kernel: 'k2' };
const noKernel: IFake = { name: 'd.ipynb', kernel: null };
const starting: IFake = { name: 'e.ipynb', kernel: undefined };

describe('pickNotebookForKernel', () => {
  it('finds the notebook on the kernel', () => {
    expect(pickNotebookForKernel([a, b], null, 'k2', kernelOf)).toBe(b);
    expect(pickNotebookForKernel([a, b], null, 'k1', kernelOf)).toBe(a);
  });

  it('prefers the current notebook when several share the kernel', () => {
    expect(pickNotebookForKernel([a, b, c], c, 'k2', kernelOf)).toBe(c);
    expect(pickNotebookForKernel([a, b, c], null, 'k2', kernelOf)).toBe(b);
  });

  it('ignores a current notebook on another kernel', () => {
    expect(pickNotebookForKernel([a, b], a, 'k2', kernelOf)).toBe(b);
  });

  it('returns null when no open notebook has the kernel (the console fallback)', () => {
    expect(pickNotebookForKernel([a, noKernel, starting], noKernel, 'k9', kernelOf)).toBeNull();
    expect(pickNotebookForKernel([], null, 'k1', kernelOf)).toBeNull();
  });

  it('accepts any iterable', () => {
    expect(pickNotebookForKernel(new Set([a, b]), null, 'k2', kernelOf)).toBe(b);
  });

  it('rejects an empty kernel id by name', () => {
    expect(() => pickNotebookForKernel([a], null, '', kernelOf)).toThrow(/kernelId/);
  });
});

describe('dashboardCode', () => {
  it('displays show_dashboard of the id without binding names', () => {
    const code = dashboardCode('ab12');
    expect(code).toBe(
      '__import__("IPython.display", fromlist=["display"]).display(' +
        '__import__("nexus_lab.lab", fromlist=["show_dashboard"]).show_dashboard("ab12"))'
    );
    expect(code).not.toMatch(/^\s*(import|from)\b/m);
    expect(code).not.toMatch(/\n/);
  });

  it('quotes ids so they stay one string literal', () => {
    expect(dashboardCode('a"b\\c')).toContain('show_dashboard("a\\"b\\\\c")');
    expect(consoleDashboardCode('x"y')).toBe('import nexus_lab.lab\nnexus_lab.lab.show_dashboard("x\\"y")');
  });

  it('rejects an empty controller id by name', () => {
    expect(() => dashboardCode('')).toThrow(/controllerId/);
    expect(() => consoleDashboardCode('')).toThrow(/controllerId/);
  });
});

describe('dashboardTitle', () => {
  it('names the controller', () => {
    const name = 'nexus tcp://127.0.0.1:8786';
    expect(dashboardTitle({ name })).toBe(`Nexus dashboard — ${name}`);
  });
});

describe('dashboardFailure', () => {
  const widget = {
    output_type: 'display_data',
    data: { 'text/plain': 'VBox(...)', [WIDGET_VIEW_MIMETYPE]: { model_id: 'm1', version_major: 2 } }
  };

  it('is null when the run displayed a widget', () => {
    expect(dashboardFailure({ status: 'ok' }, [widget])).toBeNull();
    expect(dashboardFailure({ status: 'ok' }, [{ output_type: 'stream' }, widget])).toBeNull();
  });

  it('reports a kernel error with its name and value', () => {
    const msg = dashboardFailure({ status: 'error', ename: 'KeyError', evalue: "'no controller ab12'" }, []);
    expect(msg).toBe("show_dashboard failed in the kernel: KeyError: 'no controller ab12'");
    expect(dashboardFailure({ status: 'error' }, [])).toBe('show_dashboard failed in the kernel');
  });

  it('reports an aborted request', () => {
    expect(dashboardFailure({ status: 'aborted' }, [])).toMatch(/aborted/);
    expect(dashboardFailure({ status: 'abort' }, [widget])).toMatch(/aborted/);
  });

  it('reports an unknown status', () => {
    expect(dashboardFailure({ status: 'weird' }, [widget])).toMatch(/"weird"/);
  });

  it('reports a run that displayed no widget instead of leaving a blank view', () => {
    expect(dashboardFailure({ status: 'ok' }, [])).toMatch(/displayed no widget/);
    const text = { output_type: 'execute_result', data: { 'text/plain': 'None' } };
    expect(dashboardFailure({ status: 'ok' }, [text, { output_type: 'stream' }])).toMatch(/displayed no widget/);
  });
});

describe('closing a dashboard view', () => {
  const view = (id: unknown) => ({ output_type: 'display_data', data: { [WIDGET_VIEW_MIMETYPE]: { model_id: id } } });

  it('finds the widget model ids the view displays, once each', () => {
    const outputs = [
      view('m1'),
      { output_type: 'stream' },
      { output_type: 'display_data', data: { 'text/plain': 'VBox()' } },
      view('m1'),
      view('m2'),
      view(''),
      view(42)
    ];
    expect(widgetModelIds(outputs)).toEqual(['m1', 'm2']);
    expect(widgetModelIds([])).toEqual([]);
  });

  it('closes each one in the kernel without binding names, or does nothing', () => {
    const code = closeWidgetsCode(['m1', 'a"b']);
    expect(code).not.toBeNull();
    const lines = (code as string).split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toBe('__import__("nexus_lab.lab", fromlist=["close_widget"]).close_widget("m1")');
    expect(lines[1]).toContain('close_widget("a\\"b")');
    expect(code).not.toMatch(/^\s*\w+\s*=/m);
    expect(closeWidgetsCode([])).toBeNull();
  });
});
