/**
 * The nexus-lab-panel JupyterLab plugin: the Nexus panel in the left sidebar and its commands in the palette.
 * Wiring only: the panel is in panel.ts, data handling in model.ts; talks to nothing but /nexus/api and the console.
 */
import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';

import { IControllerInfo } from './model';
import { NexusPanel } from './panel';

export const nexusIcon = new LabIcon({
  name: 'nexus-lab:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<rect x="3" y="13" width="4" height="8" rx="1"/><rect x="10" y="8" width="4" height="13" rx="1"/>' +
    '<rect x="17" y="3" width="4" height="18" rx="1"/></g></svg>'
});

export namespace CommandIDs {
  export const open = 'nexus-lab:open-panel';
  export const dashboard = 'nexus-lab:open-dashboard';
  export const replan = 'nexus-lab:replan-now';
  export const pause = 'nexus-lab:pause';
  export const resume = 'nexus-lab:resume';
}

/** Open a console on the controller's kernel, beside the notebook, and show its dashboard there. */
async function openDashboard(app: JupyterFrontEnd, c: IControllerInfo): Promise<void> {
  if (c.kernelId === null) {
    throw new Error(`Controller ${c.name} does not run in a Jupyter kernel (pid ${c.pid}); show its dashboard there.`);
  }
  const code = `import nexus_lab.lab\nnexus_lab.lab.show_dashboard(${JSON.stringify(c.id)})`;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const panel: any = await app.commands.execute('console:create', {
    kernelPreference: { id: c.kernelId },
    insertMode: 'split-right',
    activate: true,
    name: `Nexus: ${c.name}`
  });
  await panel.sessionContext.ready;
  await panel.console.inject(code);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nexus-lab-panel:plugin',
  description: 'A live Nexus side panel over every running nexus_lab controller.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const panel = new NexusPanel({ openDashboard: c => openDashboard(app, c) });
    panel.title.icon = nexusIcon;
    panel.title.caption = 'Nexus';
    shell.add(panel, 'left', { rank: 700 });
    if (restorer) {
      restorer.add(panel, 'nexus-lab-panel');
    }
    const hasController = () => panel.selected !== null;
    app.commands.addCommand(CommandIDs.open, {
      label: 'Nexus: Show Panel',
      icon: nexusIcon,
      execute: () => shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.dashboard, {
      label: 'Nexus: Open Dashboard of Selected Controller',
      isEnabled: () => panel.selected?.kernelId != null,
      execute: () => panel.openDashboard()
    });
    app.commands.addCommand(CommandIDs.replan, {
      label: 'Nexus: Re-plan Now',
      isEnabled: hasController,
      execute: () => panel.act('replan')
    });
    app.commands.addCommand(CommandIDs.pause, {
      label: 'Nexus: Pause Epoch Loop',
      isEnabled: hasController,
      execute: () => panel.act('pause')
    });
    app.commands.addCommand(CommandIDs.resume, {
      label: 'Nexus: Resume Epoch Loop',
      isEnabled: hasController,
      execute: () => panel.act('resume')
    });
    if (palette) {
      for (const command of Object.values(CommandIDs)) {
        palette.addItem({ command, category: 'Nexus' });
      }
    }
  }
};

export default plugin;
