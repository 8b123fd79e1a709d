// @teelab/jupyterlab: the kernel's attestation in the status bar and a panel, and the sealed-dataset browser.

import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, InputDialog, MainAreaWidget, showErrorMessage } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { AttestationModel } from './attestation/model';
import { AttestationPanel } from './attestation/panel';
import { AttestationStatus } from './attestation/statusItem';
import { DaskClustersModel } from './dask/model';
import { withDaskSection } from './dask/section';
import { listDatasets } from './datasets/api';
import { DatasetBrowser, INSERT_COMMAND } from './datasets/browser';
import { insertReadDataset } from './datasets/insert';
import { datasetsIcon } from './icons';

const CATEGORY = 'teelab';
const OPEN_ATTESTATION = 'teelab:open-attestation';

const attestation: JupyterFrontEndPlugin<void> = {
  id: '@teelab/jupyterlab:attestation',
  description: 'Shows whether the current notebook kernel is attested, and every check the gateway made.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ICommandPalette, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    labShell: ILabShell | null
  ) => {
    const settings = app.serviceManager.serverSettings;
    const model = new AttestationModel(settings, app.serviceManager.kernelspecs);
    const follow = () => {
      model.sessionContext = tracker.currentWidget?.sessionContext ?? null;
    };
    tracker.currentChanged.connect(follow);
    follow();
    const dask = new DaskClustersModel(model); // the kernel's Dask clusters, below its attestation

    let panel: MainAreaWidget | null = null;
    app.commands.addCommand(OPEN_ATTESTATION, {
      label: 'teelab: show kernel attestation',
      caption: 'What the gateway verified about the current notebook kernel',
      execute: () => {
        if (panel === null || panel.isDisposed) {
          panel = new MainAreaWidget({ content: withDaskSection(new AttestationPanel(model), dask) });
          panel.id = 'teelab-attestation-area';
          panel.title.label = 'Kernel attestation';
          panel.title.closable = true;
          const ref = tracker.currentWidget?.id;
          app.shell.add(panel, 'main', { mode: 'split-right', ref });
        }
        app.shell.activateById(panel.id);
        void model.refresh();
      }
    });
    palette?.addItem({ command: OPEN_ATTESTATION, category: CATEGORY });

    if (statusBar) {
      const item = new AttestationStatus(model, () => void app.commands.execute(OPEN_ATTESTATION));
      statusBar.registerStatusItem('@teelab/jupyterlab:attestation-status', {
        item,
        align: 'left',
        rank: 50,
        // Where a notebook (or this kernel's attestation panel) is current; the item hides itself for
        // kernels that are not teelab kernels.
        isActive: () => {
          const current = labShell?.currentWidget ?? tracker.currentWidget;
          return tracker.currentWidget !== null && (current === tracker.currentWidget || current === panel);
        }
      });
    }
  }
};

const datasets: JupyterFrontEndPlugin<void> = {
  id: '@teelab/jupyterlab:datasets',
  description: 'Browse, upload and grant sealed datasets; insert read_dataset into a notebook.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const settings = app.serviceManager.serverSettings;

    app.commands.addCommand(INSERT_COMMAND, {
      label: 'teelab: insert read_dataset',
      caption: 'Insert a cell that reads a sealed dataset into the active notebook',
      isEnabled: () => tracker.currentWidget !== null,
      execute: async args => {
        let name = typeof args['name'] === 'string' ? args['name'] : null;
        if (name === null) {
          let readable: string[];
          try {
            readable = (await listDatasets(settings)).filter(d => d.can_read).map(d => d.name);
          } catch (error) {
            await showErrorMessage('Cannot list datasets', error instanceof Error ? error.message : String(error));
            return;
          }
          const choice = await InputDialog.getItem({ title: 'Insert read_dataset for', items: readable });
          name = choice.button.accept ? choice.value : null;
        }
        if (name) {
          insertReadDataset(tracker, name);
        }
      }
    });
    palette?.addItem({ command: INSERT_COMMAND, category: CATEGORY });

    const browser = new DatasetBrowser(settings, app.commands);
    browser.title.icon = datasetsIcon;
    app.shell.add(browser, 'left', { rank: 650 });
    restorer?.add(browser, browser.id);
  }
};

export default [attestation, datasets];
