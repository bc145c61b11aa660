//! `flotilla image import|ls|rm`: the node's image store.

use std::path::PathBuf;

use clap::Subcommand;
use flotilla_runtime::images::ImageStore;

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Where the image store is kept.
    #[arg(long, global = true, default_value = "/var/lib/flotilla/images")]
    root: PathBuf,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image archive, a `docker save` archive (every blob is verified) or a root
    /// file system directory (one layer).
    Import {
        path: PathBuf,
        /// The name to give it (`busybox:1.36`).
        #[arg(long)]
        name: String,
    },
    /// List the images: name, manifest digest, size.
    Ls,
    /// Remove an image's name, and the blobs nothing else uses.
    Rm { name: String },
}

pub fn run(args: ImageArgs) -> Result<(), String> {
    let store = ImageStore::new(&args.root);
    match args.command {
        ImageCommand::Import { path, name } => {
            let digest = store.import(&path, &name).map_err(|e| e.to_string())?;
            println!("{name} {digest}");
        }
        ImageCommand::Ls => {
            println!("{:<30} {:<71} {:>10}", "NAME", "MANIFEST", "SIZE");
            for image in store.list().map_err(|e| e.to_string())? {
                println!(
                    "{:<30} {:<71} {:>10}",
                    image.name, image.manifest, image.size
                );
            }
        }
        ImageCommand::Rm { name } => store.remove(&name).map_err(|e| e.to_string())?,
    }
    Ok(())
}
