/**
 * The nexus-lab-panel JupyterLab plugin: the Nexus panel in the left sidebar and its commands in the palette.
 * Wiring only: the panel is in panel.ts, data handling in model.ts, the dashboard view in dashboard.ts; talks to
 * nothing but /nexus/api and the controller's kernel.
 */
import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { openDashboard } from './dashboard';
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

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nexus-lab-panel:plugin',
  description: 'A live Nexus side panel over every running nexus_lab controller.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ICommandPalette, ILayoutRestorer, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null
  ) => {
    const panel = new NexusPanel({ openDashboard: c => openDashboard(app, notebooks, c, nexusIcon) });
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
